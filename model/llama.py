"""A Llama 2 / Llama 3 decoder in one readable file (pure torch, no parallelism).

    model = Llama(get_preset("debug"))
    logits, loss = model(tokens, targets)          # tokens, targets: LongTensor [B, T]

Parallelism lives elsewhere (torchtitan style): a parallelize function wraps each
block of `model.layers` with activation checkpointing / torch.compile / FSDP.
Huge models are built on the meta device and materialized afterwards:

    with torch.device("meta"):
        model = Llama(cfg)
    ...fully_shard(...)...
    model.to_empty(device="cuda")
    model.init_weights()

Parameter names and their Hugging Face `LlamaForCausalLM` counterparts (the
exporter maps one to the other, no reshaping needed):

    tok_embeddings                    model.embed_tokens
    layers.N.attention_norm           model.layers.N.input_layernorm
    layers.N.attention.{wq,wk,wv,wo}  model.layers.N.self_attn.{q,k,v,o}_proj
    layers.N.ffn_norm                 model.layers.N.post_attention_layernorm
    layers.N.feed_forward.{w1,w3,w2}  model.layers.N.mlp.{gate,up,down}_proj
    norm                              model.norm
    output                            lm_head

RoPE convention: we rotate the two *halves* of each head (`rotate_half`, pairs
(i, i + head_dim/2)) exactly as HF Llama does, not Meta's interleaved pairs
(2i, 2i+1). Checkpoints therefore export to HF without permuting wq/wk; a Meta
checkpoint has to be permuted on import instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kiln.errors import KilnError
from model.config import ModelConfig
from model.fused_loss import IGNORE_INDEX, linear_cross_entropy
from model.kv_cache import KVCache

# Constants of the RoPE scaling rules, as published; not config fields since nobody tunes them.
YARN_BETA_FAST, YARN_BETA_SLOW = 32.0, 1.0  # YaRN paper: ramp between 32 and 1 rotations per context
LLAMA3_LOW_FREQ_FACTOR, LLAMA3_HIGH_FREQ_FACTOR = 1.0, 4.0  # Llama-3.1 release values

# SDPA grew native grouped-query attention (enable_gqa) in torch 2.5.
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


# ---------------------------------------------------------------- RoPE
def rope_inv_freq(cfg: ModelConfig, device: torch.device | str | None = None) -> tuple[Tensor, float]:
    """Per-pair rotation frequencies [head_dim/2] after the scaling rule, and the yarn attention scale."""
    d, theta, s = cfg.head_dim, cfg.rope_theta, cfg.rope_scaling_factor
    if cfg.rope_scaling == "ntk":  # stretch the base so the lowest frequency slows down by s
        theta = theta * s ** (d / (d - 2))
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d)
    if cfg.rope_scaling == "linear":  # position interpolation: position p acts as p / s
        inv_freq = inv_freq / s
    elif cfg.rope_scaling == "yarn":
        return _yarn_inv_freq(inv_freq, cfg), (0.1 * math.log(s) + 1.0 if s > 1 else 1.0)
    elif cfg.rope_scaling == "llama3":
        inv_freq = _llama3_inv_freq(inv_freq, cfg)
    return inv_freq, 1.0


def _yarn_inv_freq(inv_freq: Tensor, cfg: ModelConfig) -> Tensor:
    """YaRN: dims that rotate many times within the original context keep their frequency
    (extrapolate), dims that rotate less than once are interpolated by s, a linear ramp between."""
    d, s, length = cfg.head_dim, cfg.rope_scaling_factor, cfg.rope_original_len

    def dim_for(rotations: float) -> float:  # the dim index that makes `rotations` turns in `length`
        return d * math.log(length / (rotations * 2 * math.pi)) / (2 * math.log(cfg.rope_theta))

    low = max(math.floor(dim_for(YARN_BETA_FAST)), 0)
    high = min(math.ceil(dim_for(YARN_BETA_SLOW)), d - 1)
    high = high + 0.001 if high == low else high  # avoid 0/0, as the reference code does
    ramp = ((torch.arange(d // 2, device=inv_freq.device) - low) / (high - low)).clamp(0, 1)
    return inv_freq * (1 - ramp) + (inv_freq / s) * ramp


def _llama3_inv_freq(inv_freq: Tensor, cfg: ModelConfig) -> Tensor:
    """Llama 3.1: wavelengths shorter than original/4 are kept, longer than the original context are
    divided by s, and the band between is blended smoothly."""
    s, length = cfg.rope_scaling_factor, cfg.rope_original_len
    low, high = LLAMA3_LOW_FREQ_FACTOR, LLAMA3_HIGH_FREQ_FACTOR
    wavelen = 2 * math.pi / inv_freq
    smooth = (length / wavelen - low) / (high - low)
    blended = (1 - smooth) * inv_freq / s + smooth * inv_freq
    scaled = torch.where(wavelen > length / low, inv_freq / s, blended)
    return torch.where(wavelen < length / high, inv_freq, scaled)


def precompute_rope(cfg: ModelConfig, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """cos, sin tables [max_seq_len, head_dim] in HF's layout (each half repeats the frequencies),
    times yarn's attention scale. Angles are computed in float32; if the model is later cast to
    bf16 the tables follow, as in HF (values in [-1, 1] lose only rounding, not phase)."""
    inv_freq, mscale = rope_inv_freq(cfg, device)
    angles = torch.outer(torch.arange(cfg.max_seq_len, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos() * mscale, angles.sin() * mscale


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x [B, H, T, head_dim] by cos/sin [T, head_dim], in float32, cast back."""
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).type_as(x)


# ---------------------------------------------------------------- layers
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()  # bf16 mean-of-squares loses too much precision
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.layer_id, self.n_heads, self.n_kv_heads, self.head_dim = layer_id, cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                kv_cache: KVCache | None, start_pos: int) -> Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_id, start_pos, k, v)
        # mask None means: plain causal without a cache, or "see every cached key" with one.
        out = _sdpa(q, k, v, mask, is_causal=mask is None and kv_cache is None)
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor:
    """SDPA with grouped-query attention; query head h reads kv head h // (n_heads / n_kv_heads)."""
    if k.shape[1] != q.shape[1]:
        # The flash kernel does GQA natively; the masked (memory-efficient) kernel does not,
        # so with an explicit mask we repeat k/v instead of falling back to the O(T^2) math path.
        if _SDPA_HAS_GQA and mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=True)
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x); w1 is the gate, w3 the up projection, w2 the down projection."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attention(norm(x)), then h + feed_forward(norm(h))."""

    def __init__(self, cfg: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg, layer_id)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg.dim, cfg.hidden_dim)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None = None,
                kv_cache: KVCache | None = None, start_pos: int = 0) -> Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, mask, kv_cache, start_pos)
        return h + self.feed_forward(self.ffn_norm(h))

    def init_weights(self, std: float, out_std: float) -> None:
        for lin in (self.attention.wq, self.attention.wk, self.attention.wv,
                    self.feed_forward.w1, self.feed_forward.w3):
            nn.init.normal_(lin.weight, mean=0.0, std=std)
        for lin in (self.attention.wo, self.feed_forward.w2):  # write into the residual stream
            nn.init.normal_(lin.weight, mean=0.0, std=out_std)
        self.attention_norm.reset_parameters()
        self.ffn_norm.reset_parameters()


# ---------------------------------------------------------------- model
class Llama(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(TransformerBlock(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.fused_loss_chunk: int | None = None
        """Tokens per chunk of the fused head + loss (`model.fused_loss`), or None for the plain loss over
        full logits. How the loss is computed, not what the model is: the trainer sets it (run.fused_loss)."""
        self.fused_loss_fp8 = False
        """The fused head's matmuls on FP8 tensor cores (run.fp8_head; training steps only)."""
        # Not persistent: recomputed from the config, so checkpoints carry weights only.
        rope_cos, rope_sin = precompute_rope(cfg)
        self.register_buffer("rope_cos", rope_cos, persistent=False)
        self.register_buffer("rope_sin", rope_sin, persistent=False)
        self.init_weights()

    def init_weights(self, buffer_device: torch.device | str | None = None) -> None:
        """(Re)initialize every parameter and the RoPE table in place; works after `to_empty`."""
        cfg = self.cfg
        self.rope_cos, self.rope_sin = precompute_rope(cfg, buffer_device or self.rope_cos.device)
        if cfg.tie_embeddings and self.output.weight is not self.tok_embeddings.weight:
            self.output.weight = self.tok_embeddings.weight  # to_empty() unties shared parameters
        out_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)  # GPT-2: keep the residual sum's variance flat
        nn.init.normal_(self.tok_embeddings.weight, mean=0.0, std=cfg.init_std)
        for layer in self.layers:
            layer.init_weights(cfg.init_std, out_std)  # type: ignore[operator]
        self.norm.reset_parameters()
        if not cfg.tie_embeddings:
            nn.init.normal_(self.output.weight, mean=0.0, std=cfg.init_std)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (a tied matrix counts once); exclude_embeddings drops the input table."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_embeddings.weight.numel() if exclude_embeddings else n

    def make_kv_cache(self, batch: int, max_len: int | None = None, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None) -> KVCache:
        """An empty cache for `batch` sequences of up to max_len (default max_seq_len) tokens,
        on the model's device and in its parameter dtype unless told otherwise."""
        max_len = max_len or self.cfg.max_seq_len
        if max_len > self.cfg.max_seq_len:
            raise KilnError(f"KV cache max_len={max_len} exceeds the model's max_seq_len={self.cfg.max_seq_len}")
        w = self.tok_embeddings.weight
        return KVCache(self.cfg.n_layers, batch, self.cfg.kv_heads, max_len, self.cfg.head_dim,
                       device or w.device, dtype or w.dtype)

    def forward(self, tokens: Tensor, targets: Tensor | None = None, *, loss_mask: Tensor | None = None,
                kv_cache: KVCache | None = None, start_pos: int = 0, doc_ids: Tensor | None = None,
                attn_mask: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """tokens [B, T] at positions start_pos.. -> (logits [B, T, vocab] in the model's dtype, loss).
        The logits are None when the loss was fused with the head (`fused_loss_chunk`, targets given).

        targets: [B, T] next-token ids, IGNORE_INDEX (-100) where nothing should be learned.
        loss_mask: [B, T], only true positions count toward the loss.
        kv_cache + start_pos: incremental decoding; keys/values are appended to the cache.
        doc_ids: [B, T] document index of each token in a packed row; attention stays inside a document.
        attn_mask: bool, broadcastable to [B, n_heads, T, start_pos + T], true = may attend; ANDed
            with the causal mask.
        """
        T = tokens.shape[1]
        end = start_pos + T
        if end > self.cfg.max_seq_len:
            raise KilnError(f"sequence reaches position {end} but the model's max_seq_len is {self.cfg.max_seq_len}")
        cos, sin = self.rope_cos[start_pos:end], self.rope_sin[start_pos:end]
        mask = self._attention_mask(tokens, start_pos, kv_cache, doc_ids, attn_mask)
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, cos, sin, mask, kv_cache, start_pos)
        return self.head(h, targets, loss_mask)

    def head(self, h: Tensor, targets: Tensor | None = None,
             loss_mask: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """Final norm, output projection and loss: a separate method so it can be compiled as one
        graph (the [B, T, vocab] logits are the largest tensor of a step: fusing the upcast and the
        cross-entropy around them saves several passes over it).

        With `fused_loss_chunk` set and targets given, the loss comes from `linear_cross_entropy` in
        chunks of tokens and the logits are never made: (None, loss)."""
        h = self.norm(h)
        if targets is not None and self.fused_loss_chunk is not None:
            if loss_mask is not None:
                targets = targets.masked_fill(~loss_mask.bool(), IGNORE_INDEX)
            return None, linear_cross_entropy(h, self.output.weight, targets, self.fused_loss_chunk,
                                              fp8=self.fused_loss_fp8)
        logits = self.output(h)
        return logits, (None if targets is None else self.loss(logits, targets, loss_mask))

    @staticmethod
    def _attention_mask(tokens: Tensor, start_pos: int, kv_cache: KVCache | None,
                        doc_ids: Tensor | None, attn_mask: Tensor | None) -> Tensor | None:
        """A boolean mask, or None when SDPA needs none (is_causal, or one cached token)."""
        T = tokens.shape[1]
        if doc_ids is None and attn_mask is None and (kv_cache is None or T == 1):
            return None
        q_pos = torch.arange(start_pos, start_pos + T, device=tokens.device)
        mask = torch.arange(start_pos + T, device=tokens.device)[None, :] <= q_pos[:, None]  # [T, S]
        if doc_ids is not None:
            if kv_cache is not None:
                raise KilnError("doc_ids (packed-document masking) cannot be combined with a KV cache")
            mask = (mask & (doc_ids[:, :, None] == doc_ids[:, None, :]))[:, None]  # [B, 1, T, T]
        if attn_mask is not None:
            mask = mask & attn_mask.bool()
        return mask

    @staticmethod
    def loss(logits: Tensor, targets: Tensor, loss_mask: Tensor | None = None) -> Tensor:
        """Mean cross-entropy over counted positions (0 if none count, instead of NaN).

        Upcasts the logits once, inside the loss; the returned logits stay in the compute
        dtype so a bf16 run never holds two float32 copies of the [B, T, vocab] tensor."""
        if loss_mask is not None:
            targets = targets.masked_fill(~loss_mask.bool(), IGNORE_INDEX)
        total = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                                ignore_index=IGNORE_INDEX, reduction="sum")
        return total / (targets != IGNORE_INDEX).sum().clamp(min=1)
