"""FP8 training of the transformer blocks' linears through torchao (``run.precision = "fp8-..."``).

    convert_to_float8(model, "fp8-rowwise", device)     # before compile and FSDP (torchao's order)

torchao's `Float8Linear` keeps its weight in high precision and casts weight, input and
output gradient to float8 (e4m3) with dynamic scales around each of the three matmuls of
a linear (forward, grad input, grad weight); everything else runs as before. Two recipes:
``tensorwise`` (one scale per tensor, cuBLAS; fastest) and ``rowwise`` (a scale per row,
rounded to a power of two; CUTLASS; more accurate). Both need torch.compile to fuse the
amax/scale/cast kernels: eager FP8 is usually slower than bf16.

Which linears convert (`fp8_linear_filter`), following torchtitan's float8 converter:
- never the output head: its gradient feeds every logit and it is tied to the embedding
  table in small models; torchtitan's configs filter ``output`` too;
- only ``nn.Linear`` with both dims multiples of 16 (what the FP8 tensor cores accept);
- with ``run.fp8_filter = "auto"``, only layers large enough that FP8 pays for its casts, by the
  thresholds torchao measured on H100 per recipe (torchao ``_auto_filter_for_recipe``, used by
  torchtitan's ``auto_filter_small_kn``): a linear of ``N`` outputs and ``K`` inputs stays bf16
  if, tensorwise, ``K <= 4096 and N <= 1024``; rowwise, ``N <= 2048`` or ``K <= 1024`` or
  ``N <= 4096 and K <= 2048``. On the 1B shape that keeps wk/wv (N = 512) in bf16 tensorwise,
  and everything but w1/w3 rowwise.

torchao is imported only here and only when FP8 is asked for, so CPU machines without it
import the trainer and validate fp8 configs; building an fp8 model fails with a `KilnError`
saying what to install or which GPU is needed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from kiln.errors import KilnError

log = logging.getLogger("trainer")

TORCHAO_PIN = "torchao==0.18.0"  # the release checked against torch 2.11 (see DESIGN.md)
HEAD_NAMES = ("output",)  # module names never converted: Llama's output head
FP8_MIN_CAPABILITY = (8, 9)  # Ada (sm_89) and Hopper (sm_90) have FP8 tensor cores


def recipe_of(precision: str) -> str | None:
    """``"fp8-rowwise"`` -> ``"rowwise"``; None for bf16."""
    return precision.removeprefix("fp8-") if precision.startswith("fp8-") else None


def _too_small(recipe: str, n: int, k: int) -> bool:
    """torchao's per-recipe size thresholds: below them the casts cost more than the FP8 GEMM saves."""
    if recipe == "tensorwise":
        return k <= 4096 and n <= 1024
    return n <= 2048 or k <= 1024 or (n <= 4096 and k <= 2048)


def fp8_linear_filter(recipe: str, fp8_filter: str = "auto") -> Callable[[nn.Module, str], bool]:
    """torchao's ``module_filter_fn(module, fqn)``: True for the linears to convert (see the module doc)."""

    def convert(module: nn.Module, fqn: str) -> bool:
        if not isinstance(module, nn.Linear) or fqn.rsplit(".", 1)[-1] in HEAD_NAMES:
            return False
        n, k = module.weight.shape
        if n % 16 or k % 16:
            return False
        return fp8_filter == "all" or not _too_small(recipe, n, k)

    return convert


def check_fp8_device(device: torch.device) -> None:
    """KilnError unless `device` is a CUDA GPU with FP8 tensor cores."""
    if device.type != "cuda":
        raise KilnError(f"run.precision fp8-* needs a CUDA GPU with FP8 tensor cores; this run is on {device} "
                        "(set run.precision=bf16 or run on an H100/H200-class GPU)")
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MIN_CAPABILITY:
        raise KilnError(f"FP8 needs an H100/H200/L40/RTX 4090-class GPU (sm_89+); got "
                        f"{torch.cuda.get_device_name(device)} (sm_{capability[0]}{capability[1]}); "
                        "set run.precision=bf16")


def import_float8() -> Any:
    """``torchao.float8``, or a KilnError saying what to install."""
    try:
        import torchao.float8 as float8
    except ImportError as exc:
        raise KilnError(f"run.precision fp8-* needs torchao: pip install {TORCHAO_PIN} ({exc})") from None
    return float8


def convert_to_float8(model: nn.Module, precision: str, *, fp8_filter: str = "auto",
                      fsdp_all_gather: bool = False) -> list[str]:
    """Swap the chosen linears of `model` for torchao `Float8Linear` in place; returns their names.

    Call before compile and FSDP (torchao's order); works on the meta device. `fsdp_all_gather`
    (tensorwise only) casts each weight shard to float8 before FSDP's all-gather, halving that
    traffic; then call `precompute_fsdp_scales` after each optimizer step. It does not change the
    numbers: a tensor's scale comes from its global amax either way. The device is not checked
    here (`check_fp8_device`), so conversion itself can be tested on CPU.
    """
    recipe = recipe_of(precision)
    if recipe is None:
        return []
    float8 = import_float8()
    config = float8.Float8LinearConfig.from_recipe_name(recipe)
    if fsdp_all_gather and recipe == "tensorwise":
        config = dataclasses.replace(config, enable_fsdp_float8_all_gather=True)
    if recipe == "rowwise":
        # As torchtitan does (pytorch/pytorch#150859): without it inductor may fuse away the
        # bf16 rounding before a rowwise cast, and compiled numerics drift from eager.
        import torch._inductor.config

        torch._inductor.config.emulate_precision_casts = True
    keep = fp8_linear_filter(recipe, fp8_filter)
    converted: list[str] = []

    def chosen(module: nn.Module, fqn: str) -> bool:
        if keep(module, fqn):
            converted.append(fqn)
            return True
        return False

    float8.convert_to_float8_training(model, config=config, module_filter_fn=chosen)
    log.info("fp8 %s: %d linears in float8, the head and %d others in high precision", recipe, len(converted),
             sum(isinstance(m, nn.Linear) for m in model.modules()) - len(converted))
    return converted


def precompute_fsdp_scales(model: nn.Module) -> None:
    """After an optimizer step: every float8 weight's scale in one all-reduce (FSDP float8 all-gather only)."""
    import_float8().precompute_float8_dynamic_scale_for_fsdp(model)
