"""Export stage: a trained model artifact → a Hugging Face `LlamaForCausalLM` directory.

    ref = export(sft_ref, ExportConfig(dtype="bfloat16"), store)
    AutoModelForCausalLM.from_pretrained(ref.path / "hf"); AutoTokenizer.from_pretrained(ref.path / "hf")

The artifact's ``hf/`` holds ``config.json``, ``generation_config.json``,
``model.safetensors`` and the tokenizer files (with a ChatML chat template when the
tokenizer has the chat tokens), whose tokenizer puts Kiln's prompt prefix before a
prompt, so ``transformers`` greedy decoding equals ``kiln generate --temperature 0``;
see `model.hf_interop`. After writing, the export is
read back with `import_hf` and compared tensor by tensor with the source weights
(exactly in float32, to the dtype's rounding otherwise), so a broken export never
becomes an artifact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from kiln.errors import KilnError
from model.hf_interop import export_hf, import_hf, load_weights
from model.loading import find_tokenizer_dir, generation_settings, load_tokenizer, model_dir, prompt_prefix
from storage.atomic import atomic_write_text
from storage.store import ArtifactRef, ArtifactStore, Build, open_store
from tasks.stage import Stage, reported

STAGE = "export"
HF_DIR = "hf"


@dataclass(frozen=True)
class ExportConfig:
    """How the Hugging Face copy is written (``[export]``)."""

    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    """Weight dtype on disk (bfloat16 halves the size; float32 is bit-exact)."""
    include_tokenizer: bool = True
    """Also write the tokenizer files (tokenizer.model, tokenizer.json, tokenizer_config.json)."""


EXPORT = Stage(STAGE, "2", ExportConfig, inputs=("model",))  # 2: checksums.json; the tokenizer adds the prompt prefix


def export(model: ArtifactRef, cfg: ExportConfig, store: ArtifactStore) -> ArtifactRef:
    """Write `model` (any artifact with ``final/``) as an HF Llama directory under ``hf/``."""
    return EXPORT.produce(store, cfg, {"model": model}, lambda build: _export_into(build, model, cfg))


def _export_into(build: Build, model: ArtifactRef, cfg: ExportConfig) -> None:
    state, model_cfg = load_weights(model_dir(model.path))
    tokenizer_dir = find_tokenizer_dir(model.path) if cfg.include_tokenizer else None
    settings = generation_settings(model.path)
    # The HF tokenizer starts a prompt the way `kiln generate` does (and, as `generation.json`
    # beside the export, so does `kiln generate <export>`).
    prefix = prompt_prefix(model.path, load_tokenizer(tokenizer_dir)) if tokenizer_dir else []
    out = export_hf(state, model_cfg, build.dir / HF_DIR, tokenizer_dir=tokenizer_dir, dtype=cfg.dtype,
                    prompt_prefix=prefix, chat_bos=bool(settings.get("chat_bos", False)))
    if tokenizer_dir:
        atomic_write_text(out / "generation.json", json.dumps({**settings, "prompt_prefix": prefix}, indent=2))
    verify_export(state, out, cfg.dtype)
    build.counts.update({"tensors": len(state), "bytes": sum(p.stat().st_size for p in out.iterdir() if p.is_file())})
    build.extra["hf_config"] = json.loads((out / "config.json").read_text())


def verify_export(state: dict[str, torch.Tensor], out_dir: Path, dtype: str) -> None:
    """Read the export back with `import_hf` and compare every tensor with the source weights."""
    back, _ = import_hf(out_dir)
    exported = back.state_dict()
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    for key, tensor in state.items():
        want = tensor.to(torch_dtype).float()  # the rounding the export itself applied
        if key not in exported or not torch.equal(exported[key].float(), want):
            raise KilnError(f"{out_dir}: exported tensor {key} does not read back equal to the source; "
                            "the export is broken (please report it)")


@EXPORT.task
def export_task(model: ArtifactRef, cfg: ExportConfig, store_root: str) -> ArtifactRef:
    """Prefect wrapper: cached by artifact key."""
    return reported(export(model, cfg, open_store(store_root)))
