"""Parameter and FLOP counts from a `ModelConfig` alone, and model FLOPs utilization (MFU).

    mfu(tokens_per_s_per_gpu, cfg, seq_len)   # fraction of H100 dense bf16 peak

The FLOP count follows PaLM (appendix B) and nanoGPT's `estimate_mfu`, so our MFU
is comparable with theirs and with torchtitan's:

    flops_per_token = 6 * N  +  12 * L * H * Q * T

- 6 * N: every parameter that takes part in a matmul costs one multiply-add (2 FLOPs)
  per token forward and twice that backward (2 + 4 = 6). N counts the attention and
  FFN matrices and the output head (even when tied, it is still a vocab x dim matmul)
  but not the input embedding (a lookup) nor the RMSNorm gains (elementwise).
- 12 * L * H * Q * T: attention itself, per layer: QK^T and softmax(.)V are each
  2 * T * H * Q FLOPs forward per token, times 3 for forward + backward. H = n_heads,
  Q = head_dim (H * Q = dim; GQA does not change it), T = seq_len. The causal mask's
  halving is *not* applied, like PaLM/nanoGPT/torchtitan; recomputation from
  activation checkpointing is not counted either (that is what makes it *model* FLOPs).
"""

from __future__ import annotations

from model.config import ModelConfig

# NVIDIA H100 SXM, dense bf16 tensor-core peak. The 1979 TFLOP/s on the datasheet assumes
# 2:4 structured sparsity, which training does not use.
H100_BF16_PEAK = 989e12


def _layer_matmul_params(cfg: ModelConfig) -> int:
    """Weights of one block's linear layers: wq, wk, wv, wo and w1, w2, w3."""
    q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    attention = cfg.dim * q_dim + 2 * cfg.dim * kv_dim + q_dim * cfg.dim
    return attention + 3 * cfg.dim * cfg.hidden_dim


def count_params(cfg: ModelConfig, exclude_embeddings: bool = False) -> int:
    """Exactly `sum(p.numel() for p in Llama(cfg).parameters())` (a tied matrix counts once).

    exclude_embeddings drops the input embedding table (which, when tied, is also the head)."""
    per_layer = _layer_matmul_params(cfg) + 2 * cfg.dim  # + attention_norm and ffn_norm gains
    embedding = cfg.vocab_size * cfg.dim
    head = 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.dim
    total = cfg.n_layers * per_layer + cfg.dim + embedding + head  # cfg.dim: the final norm
    return total - embedding if exclude_embeddings else total


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token at sequence length seq_len; see module doc."""
    n_matmul = cfg.n_layers * _layer_matmul_params(cfg) + cfg.vocab_size * cfg.dim
    attention = 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len
    return float(6 * n_matmul + attention)


def mfu(tokens_per_s: float, cfg: ModelConfig, seq_len: int, peak_flops: float = H100_BF16_PEAK) -> float:
    """Model FLOPs utilization in [0, 1]: achieved training FLOP/s over peak_flops.

    tokens_per_s and peak_flops must describe the same hardware: tokens per second per GPU
    with one GPU's peak, or the whole job's throughput with peak_flops * n_gpus."""
    return tokens_per_s * flops_per_token(cfg, seq_len) / peak_flops
