"""`ModelConfig`: every number that defines a Llama-style model's shape.

Fields are plain ints/floats/strs/bools/None so a config round-trips through
JSON/TOML and is saved beside every checkpoint (`dataclasses.asdict(cfg)`).
Derived sizes (`head_dim`, `kv_heads`, `hidden_dim`) are properties, not
fields, so they are never saved and can never disagree with the fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from kiln.errors import KilnError

ROPE_SCALINGS = ("none", "linear", "ntk", "yarn", "llama3")

# Annotation string -> accepted Python types (ints are accepted where a float is
# expected because TOML writes `rope_theta = 500000` as an int).
_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
}


@dataclass
class ModelConfig:
    """Shape of a decoder-only Llama (Llama 2 / Llama 3 family). Defaults are Llama-2-7B."""

    vocab_size: int = 32000
    """Rows of the embedding table; must cover every id the tokenizer emits."""
    dim: int = 4096
    """Width of the residual stream (HF: hidden_size)."""
    n_layers: int = 32
    """Number of transformer blocks."""
    n_heads: int = 32
    """Query heads per attention layer; `dim` must be divisible by it."""
    n_kv_heads: int | None = None
    """Key/value heads for grouped-query attention; None means n_heads (plain multi-head)."""
    ffn_hidden: int | None = None
    """SwiGLU hidden width. None applies the Llama rule: int(2 * 4 * dim / 3), times
    `ffn_dim_multiplier` if set, rounded up to a multiple of `multiple_of`."""
    ffn_dim_multiplier: float | None = None
    """Only used when ffn_hidden is None (Llama-3-8B: 1.3)."""
    multiple_of: int = 256
    """Only used when ffn_hidden is None: round the FFN width up to this (GPU-friendly sizes)."""
    max_seq_len: int = 2048
    """Longest sequence the model accepts; sizes the RoPE table and the default KV cache."""
    rope_theta: float = 10000.0
    """RoPE base (Llama 2: 1e4, Llama 3: 5e5)."""
    rope_scaling: str = "none"
    """Context-extension rule for RoPE: none | linear | ntk | yarn | llama3 (see model.llama)."""
    rope_scaling_factor: float = 1.0
    """How many times longer the context is than the original (s in the papers)."""
    rope_original_max_seq_len: int | None = None
    """Context length the model was trained at before scaling (yarn, llama3). None means
    max_seq_len / rope_scaling_factor."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    tie_embeddings: bool = False
    """Share the input embedding matrix with the output head (small models, Llama-3.2-1B)."""
    init_std: float = 0.02
    """Std of the normal init; residual output projections use init_std / sqrt(2 * n_layers)."""

    def __post_init__(self) -> None:
        self._check_types()
        positive = ["vocab_size", "dim", "n_layers", "n_heads", "multiple_of", "max_seq_len",
                    "rope_theta", "rope_scaling_factor", "norm_eps", "init_std"]
        positive += [n for n in ("n_kv_heads", "ffn_hidden", "ffn_dim_multiplier",
                                 "rope_original_max_seq_len") if getattr(self, n) is not None]
        for name in positive:
            if getattr(self, name) <= 0:
                raise KilnError(f"model config: {name} must be > 0, got {getattr(self, name)!r}")
        if self.dim % self.n_heads:
            raise KilnError(f"model config: dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.head_dim % 2:
            raise KilnError(f"model config: dim / n_heads = {self.head_dim} must be even for RoPE (dim, n_heads)")
        if self.n_heads % self.kv_heads:
            raise KilnError(f"model config: n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.kv_heads})")
        if self.rope_scaling not in ROPE_SCALINGS:
            raise KilnError(f"model config: rope_scaling must be one of {'|'.join(ROPE_SCALINGS)}, "
                            f"got {self.rope_scaling!r}")
        if self.rope_scaling == "ntk" and self.head_dim < 4:  # the NTK exponent is d / (d - 2)
            raise KilnError(f"model config: rope_scaling='ntk' needs head_dim >= 4, got {self.head_dim}")

    def _check_types(self) -> None:
        """Reject e.g. dim = "4096" or dim = 4096.0 from a hand-written TOML; normalise floats."""
        for f in fields(self):
            value = getattr(self, f.name)
            base, _, optional = str(f.type).partition(" | ")
            if value is None and optional == "None":
                continue
            if not isinstance(value, _TYPES[base]) or (base != "bool" and isinstance(value, bool)):
                raise KilnError(f"model config: {f.name} must be {f.type}, got {value!r}")
            if isinstance(value, int) and base == "float":
                setattr(self, f.name, float(value))

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def hidden_dim(self) -> int:
        """The SwiGLU width actually built (the Llama rule applied when ffn_hidden is None)."""
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        hidden = int(2 * 4 * self.dim / 3)  # 2/3 of 4*dim keeps SwiGLU's 3 matrices ~ a 4*dim MLP's 2
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)

    @property
    def rope_original_len(self) -> int:
        """Pre-extension context length used by the yarn and llama3 rules."""
        if self.rope_original_max_seq_len is not None:
            return self.rope_original_max_seq_len
        return max(1, round(self.max_seq_len / self.rope_scaling_factor))
