"""Kiln's model: one Llama implementation, from a CPU debug model to Llama-3.1-8B.

How the pieces fit:

- `config.ModelConfig` holds every number that shapes a model (plain fields, saved as
  JSON/TOML beside each checkpoint); `presets.PRESETS` / `get_preset` name the shapes
  we train (`debug`, `tiny`, `125m`, `1b`, `7b`, `llama3-8b`, `llama3.1-8b`).
- `llama.Llama(cfg)` is the network (RMSNorm, RoPE with scaling, GQA attention via
  SDPA, SwiGLU). It knows nothing about parallelism: the trainer's parallelize step
  wraps `model.layers[i]` and can build the model on the meta device, then
  `to_empty` + `init_weights()`. Parameter names map 1:1 to HF `LlamaForCausalLM`.
- `fused_loss.linear_cross_entropy` is the head + cross-entropy in chunks of tokens with
  their gradients, never making the full [tokens, vocab] logits (``Llama.fused_loss_chunk``).
- `kv_cache.KVCache` and `generate.generate` / `stream_generate` / `sample_next`
  turn a model into text ids (greedy, temperature, top-k, top-p).
- `flops.count_params` / `flops_per_token` / `mfu` size a model and score a run
  from the config alone, without building it.

- `tokenizer.Tokenizer` is the model's vocabulary (SentencePiece plus Kiln's metadata);
  `sp_proto` reads SentencePiece's model file at the wire level; `hf_interop` and
  `hf_tokenizer` export to (and import from) the Hugging Face layout; `loading` finds a
  model directory's weights, tokenizer and generation settings.

Nothing here imports Prefect, Dask or transformers: torch, sentencepiece, safetensors and
tokenizers (all core dependencies) are enough, as on the GPU machines.
"""

from model.config import ModelConfig
from model.flops import H100_BF16_PEAK, count_params, flops_per_token, mfu
from model.generate import generate, sample_next, stream_generate
from model.kv_cache import KVCache
from model.llama import IGNORE_INDEX, Llama
from model.presets import PRESETS, get_preset

__all__ = [
    "H100_BF16_PEAK",
    "IGNORE_INDEX",
    "PRESETS",
    "KVCache",
    "Llama",
    "ModelConfig",
    "count_params",
    "flops_per_token",
    "generate",
    "get_preset",
    "mfu",
    "sample_next",
    "stream_generate",
]
