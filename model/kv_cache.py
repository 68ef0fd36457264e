"""A preallocated key/value cache for incremental decoding.

One [batch, n_kv_heads, max_len, head_dim] buffer per layer for keys and one for
values, filled in place as tokens are decoded: no reallocation per step, and
cached keys are stored *after* RoPE, so a position's key is computed once.
Build one with `Llama.make_kv_cache(batch)`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kiln.errors import KilnError


class KVCache:
    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.batch, self.max_len = batch, max_len

    def update(self, layer_id: int, start_pos: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v [B, n_kv_heads, T, head_dim] at positions start_pos..start_pos+T-1 and
        return this layer's keys and values for positions 0..start_pos+T-1."""
        end = start_pos + k.shape[2]
        if end > self.max_len:
            raise KilnError(f"KV cache is full: position {end - 1} does not fit max_len={self.max_len}; "
                            f"make the cache longer (at most the model's max_seq_len) or generate fewer tokens")
        if k.shape[0] != self.batch:
            raise KilnError(f"KV cache was made for batch {self.batch}, got a batch of {k.shape[0]}")
        self.k[layer_id][:, :, start_pos:end] = k
        self.v[layer_id][:, :, start_pos:end] = v
        return self.k[layer_id][:, :, :end], self.v[layer_id][:, :, :end]
