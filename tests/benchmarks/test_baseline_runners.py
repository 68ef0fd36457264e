"""The baseline runners' shapes and FLOP counts must stay in step with Kiln's presets.

torchtitan and LitGPT are not installed in CI (they run on the GPU machine from .whl/), so
only the parts of the runners that import neither are tested here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from model.flops import count_params, flops_per_token
from model.presets import get_preset

RUNNER = Path(__file__).resolve().parents[2] / "benchmarks" / "baselines" / "torchtitan_runner.py"


@pytest.fixture(scope="module")
def runner():
    spec = importlib.util.spec_from_file_location("torchtitan_runner", RUNNER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["torchtitan_runner"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["debug", "125m", "1b", "8b"])
def test_shapes_match_kiln_presets(runner, name):
    """Block shapes equal Kiln's presets; torchtitan's llama3 is untied, so only the 1b head differs."""
    shape = runner.SHAPES[name]
    cfg = get_preset(shape.kiln_preset)
    assert (shape.dim, shape.n_layers, shape.n_heads, shape.n_kv_heads) == (cfg.dim, cfg.n_layers, cfg.n_heads,
                                                                            cfg.kv_heads)
    assert (shape.ffn_hidden, shape.vocab_size, shape.rope_theta) == (cfg.hidden_dim, cfg.vocab_size, cfg.rope_theta)
    assert cfg.tie_embeddings == (name == "1b")
    # torchtitan 0.2.2's FFN rule (FeedForward.__init__) on the flavor's fields gives Kiln's width
    hidden = int(2 * 4 * shape.dim / 3)
    if shape.ffn_dim_multiplier is not None:
        hidden = int(shape.ffn_dim_multiplier * hidden)
    assert shape.multiple_of * -(-hidden // shape.multiple_of) == shape.ffn_hidden


@pytest.mark.parametrize(("name", "params"), [("125m", 134_105_856), ("1b", 1_235_814_400),
                                              ("8b", 8_030_261_248)])
def test_flops_match_an_independent_count(runner, name, params):
    """The runner's FLOPs per token equal 6 N + 12 L d T with N counted from the real model's matmuls.

    N is read off `Llama(cfg)` built on the meta device: the weights of every `nn.Linear`
    (attention, FFN and the output head, which is a vocab x dim matmul even when tied), not
    from `model.flops`. 1_235_814_400 is the published parameter count of Llama-3.2-1B, 8_030_261_248
    that of Llama-3.1-8B. Untying the 1b head (torchtitan's llama3) adds a parameter matrix, not FLOPs.
    """
    import torch
    from torch import nn

    from model.llama import Llama

    shape = runner.SHAPES[name]
    cfg = get_preset(shape.kiln_preset, max_seq_len=2048)
    with torch.device("meta"):
        model = Llama(cfg)
    assert sum(p.numel() for p in model.parameters()) == params == count_params(cfg)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    n_matmul = sum(m.weight.numel() for m in linears)  # a tied head is its own module: counted here
    assert any(m.weight.shape == (cfg.vocab_size, cfg.dim) for m in linears)  # the head is among them
    expected = 6 * n_matmul + 12 * cfg.n_layers * cfg.dim * 2048
    flops, runner_matmul, source = runner.kiln_flops_per_token(shape, 2048)
    assert flops == expected == flops_per_token(cfg, 2048)
    assert flops == flops_per_token(get_preset(shape.kiln_preset, tie_embeddings=False, max_seq_len=2048), 2048)
    assert runner_matmul == n_matmul
    assert source == "kiln model.flops.flops_per_token"


def test_cli_defaults(runner):
    args = runner.parse_args(["--shape", "llama3-8b", "--", "--debug.print_config"])
    assert (args.shape, args.compile, args.float8, args.activation_checkpoint, args.parallel) == (
        "8b", False, "none", "none", "fsdp")
    assert args.tt_args == ["--debug.print_config"]


def _opts(argv: list[str]) -> dict[str, str]:
    """torchtitan options as {--name: value}; a flag maps to ''."""
    out, i = {}, 0
    while i < len(argv):
        has_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
        out[argv[i]] = argv[i + 1] if has_value else ""
        i += 2 if has_value else 1
    return out


def test_torchtitan_options_for_bf16_turn_off_its_default_checkpointing(runner):
    args = runner.parse_args(["--shape", "1b", "--batch-size", "4", "--seq-len", "4096", "--steps", "20",
                              "--warmup", "8", "--compile", "--dump-folder", "/tmp/tt", "--device", "cuda"])
    opts = _opts(runner.torchtitan_argv(args))
    assert opts["--model.name"] == runner.TRAIN_SPEC and opts["--model.flavor"] == "1b"
    assert (opts["--training.local_batch_size"], opts["--training.seq_len"], opts["--training.steps"]) == (
        "4", "4096", "28")
    assert opts["--activation_checkpoint.mode"] == "none"  # torchtitan's own default is selective
    assert "--compile.enable" in opts and opts["--metrics.log_freq"] == "1"
    assert not any(k.startswith("--quantize") or k == "--model.converters" for k in opts)


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_torchtitan_options_for_float8_and_selective_checkpointing(runner, recipe):
    args = runner.parse_args(["--shape", "8b", "--float8", recipe, "--activation-checkpoint", "selective",
                              "--dump-folder", "/tmp/tt", "--device", "cuda"])
    opts = _opts(runner.torchtitan_argv(args))
    assert opts["--model.converters"] == "quantize.linear.float8"
    assert opts["--quantize.linear.float8.recipe_name"] == recipe
    assert opts["--quantize.linear.float8.filter_fqns"] == "output"  # one comma-separated value
    assert "--quantize.linear.float8.emulate" not in opts  # emulation only for the CPU dry run
    assert (opts["--activation_checkpoint.mode"], opts["--activation_checkpoint.selective_ac_option"]) == (
        "selective", "op")
    assert "--compile.no-enable" in opts
    assert runner.PRECISION[recipe] == f"fp8-{recipe}"
