"""Hugging Face interop: write a Kiln Llama as a `LlamaForCausalLM` directory, and read one back.

    export_hf(model, model.cfg, "out/hf", tokenizer_dir="kiln-artifacts/tokenizer/<key>")
    hf = transformers.AutoModelForCausalLM.from_pretrained("out/hf")      # same logits
    model, cfg = import_hf("out/hf")                                       # or any HF Llama checkpoint

Parameter names map one to one (see `model.llama`), and no q/k permutation is
needed: our RoPE rotates the two halves of each head (HF's ``rotate_half``), not
Meta's interleaved pairs. The test suite checks logits against transformers.

RoPE scaling in ``config.json``: linear, yarn and llama3 map to HF's rope types of
the same name with ``original_max_position_embeddings`` written out (HF would
otherwise guess it). Our "ntk" rule only stretches the base (theta * s^(d/(d-2))),
so it is exported as plain RoPE with that base; HF's "dynamic" NTK is a different
rule. The config carries both the transformers 4 keys (``rope_theta``,
``rope_scaling``) and the 5.x ``rope_parameters``.

safetensors (a core dependency) writes the weights; transformers itself is not needed.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from kiln.errors import KilnError
from model.config import ModelConfig
from model.hf_tokenizer import save_hf_tokenizer
from model.integrity import CHECKSUMS, verify_checksums, write_checksums
from model.llama import LLAMA3_HIGH_FREQ_FACTOR, LLAMA3_LOW_FREQ_FACTOR, Llama
from model.tokenizer import Tokenizer

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
KILN_CONFIG = "kiln_model_config.json"  # Kiln's own config beside an export's HF config.json
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# (Kiln pattern, HF pattern); N is the layer number.
_NAMES = [
    ("tok_embeddings.weight", "model.embed_tokens.weight"),
    ("norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
    ("layers.N.attention_norm.weight", "model.layers.N.input_layernorm.weight"),
    ("layers.N.ffn_norm.weight", "model.layers.N.post_attention_layernorm.weight"),
    ("layers.N.attention.wq.weight", "model.layers.N.self_attn.q_proj.weight"),
    ("layers.N.attention.wk.weight", "model.layers.N.self_attn.k_proj.weight"),
    ("layers.N.attention.wv.weight", "model.layers.N.self_attn.v_proj.weight"),
    ("layers.N.attention.wo.weight", "model.layers.N.self_attn.o_proj.weight"),
    ("layers.N.feed_forward.w1.weight", "model.layers.N.mlp.gate_proj.weight"),
    ("layers.N.feed_forward.w3.weight", "model.layers.N.mlp.up_proj.weight"),
    ("layers.N.feed_forward.w2.weight", "model.layers.N.mlp.down_proj.weight"),
]


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(name).replace("N", r"(\d+)") + "$")


_TO_HF = [(_pattern(k), h) for k, h in _NAMES]
_FROM_HF = [(_pattern(h), k) for k, h in _NAMES]


def _rename(name: str, table: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, target in table:
        if m := pattern.match(name):
            return target.replace("N", m.group(1)) if m.groups() else target
    return None


def to_hf_state_dict(state: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Kiln names → HF names; a tied head is left out (HF re-ties it from the embeddings)."""
    out = {}
    for name, tensor in state.items():
        hf = _rename(name, _TO_HF)
        if hf is None:
            raise KilnError(f"export: no Hugging Face name for parameter {name!r} (merge LoRA adapters first)")
        if not (cfg.tie_embeddings and hf == "lm_head.weight"):
            out[hf] = tensor
    return out


def from_hf_state_dict(state: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """HF names → Kiln names; rotary caches are skipped, a missing head is tied or an error."""
    out = {}
    for name, tensor in state.items():
        if name.endswith("rotary_emb.inv_freq"):  # a buffer older checkpoints saved; we recompute it
            continue
        kiln = _rename(name, _FROM_HF)
        if kiln is None:
            raise KilnError(f"import: unexpected Hugging Face parameter {name!r}; only LlamaForCausalLM is supported")
        out[kiln] = tensor
    if "output.weight" not in out:
        if not cfg.tie_embeddings:
            raise KilnError("import: lm_head.weight missing and tie_word_embeddings is false")
        out["output.weight"] = out["tok_embeddings.weight"]
    return out


# ---------------------------------------------------------------- config
def _rope_fields(cfg: ModelConfig) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, HF rope_scaling dict or None) equivalent to our RoPE rule."""
    s, d = cfg.rope_scaling_factor, cfg.head_dim
    if cfg.rope_scaling == "none":
        return cfg.rope_theta, None
    if cfg.rope_scaling == "ntk":  # a static base change, exactly
        return cfg.rope_theta * s ** (d / (d - 2)), None
    scaling: dict[str, Any] = {"rope_type": cfg.rope_scaling, "factor": s}
    if cfg.rope_scaling in ("yarn", "llama3"):
        scaling["original_max_position_embeddings"] = cfg.rope_original_len
    if cfg.rope_scaling == "llama3":
        scaling.update(low_freq_factor=LLAMA3_LOW_FREQ_FACTOR, high_freq_factor=LLAMA3_HIGH_FREQ_FACTOR)
    return cfg.rope_theta, scaling


def hf_config(cfg: ModelConfig, *, bos_id: int | None = None, eos_id: int | None = None,
              pad_id: int | None = None, dtype: str = "float32") -> dict[str, Any]:
    """The ``config.json`` of a `LlamaForCausalLM` with our shape."""
    theta, scaling = _rope_fields(cfg)
    rope_parameters = {"rope_type": "default", **(scaling or {}), "rope_theta": theta}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": theta,
        "rope_scaling": scaling,
        "rope_parameters": rope_parameters,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": cfg.init_std,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": dtype,
        "dtype": dtype,
        "use_cache": True,
    }


def model_config_from_hf(hf: dict[str, Any], max_seq_len: int | None = None) -> ModelConfig:
    """Our `ModelConfig` for an HF Llama ``config.json``; unsupported variants are a KilnError."""
    if hf.get("model_type") not in ("llama", None) or hf.get("hidden_act", "silu") != "silu":
        raise KilnError(f"import: only Llama (silu) configs are supported, got model_type={hf.get('model_type')!r}")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise KilnError("import: attention_bias / mlp_bias are not supported by Kiln's Llama")
    dim, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    if int(hf.get("head_dim") or dim // heads) != dim // heads:
        raise KilnError(f"import: head_dim {hf['head_dim']} != hidden_size / num_attention_heads ({dim // heads})")
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {k: v for k, v in params.items() if k != "rope_theta"}
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    kind = "none" if kind == "default" else kind
    if kind not in ("none", "linear", "yarn", "llama3"):
        raise KilnError(f"import: rope_type {kind!r} is not supported (use none, linear, yarn or llama3)")
    original = scaling.get("original_max_position_embeddings")
    return ModelConfig(
        vocab_size=int(hf["vocab_size"]), dim=dim, n_layers=int(hf["num_hidden_layers"]), n_heads=heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or heads), ffn_hidden=int(hf["intermediate_size"]),
        max_seq_len=int(max_seq_len or hf.get("max_position_embeddings", 2048)),
        rope_theta=float(hf.get("rope_theta") or params.get("rope_theta") or 10000.0),
        rope_scaling=kind, rope_scaling_factor=float(scaling.get("factor", 1.0)) if kind != "none" else 1.0,
        rope_original_max_seq_len=int(original) if original and kind in ("yarn", "llama3") else None,
        norm_eps=float(hf.get("rms_norm_eps", 1e-5)), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        init_std=float(hf.get("initializer_range", 0.02)),
    )


# ---------------------------------------------------------------- export / import
def export_hf(model_or_state: nn.Module | dict[str, Tensor], cfg: ModelConfig, out_dir: str | Path, *,
              tokenizer_dir: str | Path | None = None, dtype: str = "float32",
              prompt_prefix: Sequence[int] = (), chat_bos: bool = False) -> Path:
    """Write ``config.json``, ``model.safetensors`` (+ tokenizer and chat template) into `out_dir`.

    Accepts a `Llama` or its state dict (Kiln names). LoRA adapters must be merged first.
    `prompt_prefix` (the ids Kiln puts before a prompt, `model.loading.prompt_prefix`) is
    what the HF tokenizer adds as its special tokens, and `chat_bos` (SFT data encoded with
    BOS) starts the chat template with BOS, so HF prompts are Kiln's prompts.
    """
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    tensors = {k: v.detach().to("cpu", torch_dtype).contiguous().clone()  # clone: safetensors rejects aliases
               for k, v in to_hf_state_dict(state, cfg).items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt"})
    ids = _tokenizer_ids(tokenizer_dir, out, prompt_prefix, chat_bos) if tokenizer_dir else {}
    config = hf_config(cfg, dtype=dtype, **{k: ids.get(k) for k in ("bos_id", "eos_id", "pad_id")})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": ids.get("bos_id"), "eos_token_id": ids.get("stop_ids") or ids.get("eos_id"),
                  "pad_token_id": ids.get("pad_id")}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    (out / KILN_CONFIG).write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    write_checksums(out, [p.name for p in out.iterdir() if p.is_file() and p.name != CHECKSUMS])
    return out


def _tokenizer_ids(tokenizer_dir: str | Path, out: Path, prompt_prefix: Sequence[int],
                   chat_bos: bool) -> dict[str, Any]:
    """Write the HF tokenizer files (with a ChatML chat template when the chat tokens exist)."""
    tok = Tokenizer.load(tokenizer_dir)
    save_hf_tokenizer(tokenizer_dir, out, prompt_prefix=prompt_prefix)
    pad_id = tok.pad_id if tok.pad_id >= 0 else None
    # HF's bos_token_id is the tokenizer's bos_token: the one-token prompt prefix when there is one.
    bos_id = int(prompt_prefix[0]) if len(prompt_prefix) == 1 else tok.bos_id
    ids: dict[str, Any] = {"bos_id": bos_id, "eos_id": tok.eos_id, "pad_id": pad_id}
    specials = tok.special_tokens
    if "<|im_start|>" in specials and "<|im_end|>" in specials:
        config_path = out / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        bos = "{{ '" + tok.id_to_token(tok.bos_id) + "' }}" if chat_bos else ""  # as `kiln.chat.encode_prompt`
        config["chat_template"] = bos + CHATML_TEMPLATE
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        ids["stop_ids"] = [tok.eos_id, specials["<|im_end|>"]]  # a chat reply ends at <|im_end|>
    return ids


def load_hf_state_dict(hf_dir: str | Path) -> dict[str, Tensor]:
    """All tensors of an HF checkpoint: one ``model.safetensors`` or shards listed in its index."""
    d = Path(hf_dir)
    if (d / WEIGHTS).is_file():
        return load_file(str(d / WEIGHTS))
    if (d / INDEX).is_file():
        shards = sorted(set(json.loads((d / INDEX).read_text())["weight_map"].values()))
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(load_file(str(d / shard)))
        return state
    raise KilnError(f"{d}: no {WEIGHTS} or {INDEX}; only safetensors checkpoints can be imported")


def load_weights(model_dir: str | Path) -> tuple[dict[str, Tensor], ModelConfig]:
    """Full CPU state dict (Kiln names) and config of a model directory in either layout: Kiln's
    (``config.json`` = ModelConfig, ``model.safetensors`` or ``model.pt``) or Hugging Face's.

    Every file is first checked against the directory's ``checksums.json`` (`model.integrity`)."""
    d = Path(model_dir)
    config_path = d / "config.json"
    if not config_path.is_file():
        raise KilnError(f"{config_path}: not found; point at a model directory")
    raw = json.loads(config_path.read_text())
    if "model_type" in raw:  # Hugging Face layout: Kiln's exports carry checksums, other checkpoints may not
        verify_checksums(d, required=(d / KILN_CONFIG).is_file())
        cfg = model_config_from_hf(raw)
        return from_hf_state_dict(load_hf_state_dict(d), cfg), cfg
    verify_checksums(d, required=True)
    cfg = ModelConfig(**raw)
    if (d / WEIGHTS).is_file():
        return load_file(str(d / WEIGHTS)), cfg
    if not (d / "model.pt").is_file():
        raise KilnError(f"{d}: no {WEIGHTS} or model.pt next to config.json")
    return torch.load(d / "model.pt", map_location="cpu", weights_only=True), cfg


def build_llama(state: dict[str, Tensor], cfg: ModelConfig, *, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> Llama:
    """A `Llama` (eval mode) holding `state`, built on the meta device so weights are allocated once."""
    with torch.device("meta"):
        model = Llama(cfg)
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights()  # RoPE tables (non-persistent buffers); weights are overwritten next
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise KilnError(f"weights do not fit the config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.to(dtype).eval()


def import_hf(hf_dir: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
              max_seq_len: int | None = None) -> tuple[Llama, ModelConfig]:
    """A Kiln `Llama` (eval mode) with the weights of an HF Llama directory, and its config.

    `max_seq_len` overrides ``max_position_embeddings`` (it only sizes the RoPE table).
    """
    d = Path(hf_dir)
    config_path = d / "config.json"
    if not config_path.is_file():
        raise KilnError(f"{config_path}: not found; point at a Hugging Face model directory")
    cfg = model_config_from_hf(json.loads(config_path.read_text()), max_seq_len)
    state = from_hf_state_dict(load_hf_state_dict(d), cfg)
    return build_llama(state, cfg, device=device, dtype=dtype), cfg
