"""Tests for RoPE and its context-extension rules (model.llama)."""

from __future__ import annotations

import math

import pytest
import torch

from model import Llama, get_preset
from model.llama import apply_rope, precompute_rope, rope_inv_freq


def test_rotation_is_hf_rotate_half_convention() -> None:
    """Pair (i, i + d/2) is the complex number x_i + j*x_{i+d/2}, rotated by p * inv_freq_i."""
    cfg = get_preset("debug")
    d, p = cfg.head_dim, 5
    x = torch.randn(1, 1, 1, d)
    cos, sin = (t[p:p + 1] for t in precompute_rope(cfg))
    out = apply_rope(x, cos, sin)
    inv_freq, _ = rope_inv_freq(cfg)
    z = torch.complex(x[..., : d // 2], x[..., d // 2:]) * torch.polar(torch.ones(d // 2), p * inv_freq)
    torch.testing.assert_close(out, torch.cat([z.real, z.imag], -1))


def test_rope_scores_depend_only_on_relative_position() -> None:
    cfg = get_preset("debug")
    cos, sin = precompute_rope(cfg)
    q, k = torch.randn(1, 1, 1, cfg.head_dim), torch.randn(1, 1, 1, cfg.head_dim)

    def score(m: int, n: int) -> torch.Tensor:
        return (apply_rope(q, cos[m:m + 1], sin[m:m + 1]) * apply_rope(k, cos[n:n + 1], sin[n:n + 1])).sum()

    torch.testing.assert_close(score(10, 3), score(90, 83), atol=1e-5, rtol=1e-5)


def test_linear_scaling_is_unscaled_rope_at_positions_over_s() -> None:
    s = 4.0
    cos, sin = precompute_rope(get_preset("debug", rope_scaling="linear", rope_scaling_factor=s))
    inv_freq, _ = rope_inv_freq(get_preset("debug"))
    positions = torch.arange(128, dtype=torch.float32) / s  # fractional positions
    angles = torch.outer(positions, inv_freq).repeat(1, 2)
    torch.testing.assert_close(cos, angles.cos(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sin, angles.sin(), atol=1e-5, rtol=1e-5)
    # integer positions coincide: scaled position 4p is plain position p
    plain_cos, plain_sin = precompute_rope(get_preset("debug"))
    torch.testing.assert_close(sin[::4], plain_sin[:32], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cos[::4], plain_cos[:32], atol=1e-5, rtol=1e-5)


def test_ntk_keeps_highest_frequency_and_slows_lowest_by_s() -> None:
    base, _ = rope_inv_freq(get_preset("debug"))
    ntk, scale = rope_inv_freq(get_preset("debug", rope_scaling="ntk", rope_scaling_factor=8.0))
    assert scale == 1.0
    torch.testing.assert_close(ntk[0], base[0])
    torch.testing.assert_close(ntk[-1], base[-1] / 8.0)


def test_llama3_keeps_short_wavelengths_and_divides_long_ones() -> None:
    cfg = get_preset("debug", rope_scaling="llama3", rope_scaling_factor=8.0, rope_original_max_seq_len=64)
    base, _ = rope_inv_freq(get_preset("debug"))
    scaled, _ = rope_inv_freq(cfg)
    wavelen = 2 * math.pi / base
    short, long = wavelen < 64 / 4, wavelen > 64
    assert short.any() and long.any()
    torch.testing.assert_close(scaled[short], base[short])
    torch.testing.assert_close(scaled[long], base[long] / 8.0)
    middle = ~short & ~long
    assert ((scaled[middle] < base[middle]) & (scaled[middle] > base[middle] / 8.0)).all()


def test_yarn_blends_frequencies_and_sets_attention_temperature() -> None:
    s = 4.0
    cfg = get_preset("debug", rope_scaling="yarn", rope_scaling_factor=s)
    base, _ = rope_inv_freq(get_preset("debug"))
    scaled, mscale = rope_inv_freq(cfg)
    assert mscale == pytest.approx(0.1 * math.log(s) + 1)
    torch.testing.assert_close(scaled[0], base[0])  # fastest dim extrapolates unchanged
    torch.testing.assert_close(scaled[-1], base[-1] / s)  # slowest dim is interpolated
    assert ((scaled <= base * (1 + 1e-6)) & (scaled >= base / s * (1 - 1e-6))).all()
    cos, sin = precompute_rope(cfg)
    torch.testing.assert_close(cos**2 + sin**2, torch.full_like(cos, mscale**2))


@pytest.mark.parametrize("mode", ["linear", "ntk", "yarn", "llama3"])
def test_each_scaling_mode_is_finite_and_changes_the_output(mode: str) -> None:
    torch.manual_seed(0)
    plain = Llama(get_preset("debug"))
    scaled = Llama(get_preset("debug", rope_scaling=mode, rope_scaling_factor=4.0))
    scaled.load_state_dict(plain.state_dict())  # same weights; only the rotations differ
    tokens = torch.randint(0, 512, (1, 128))
    a, b = plain(tokens)[0], scaled(tokens)[0]
    assert torch.isfinite(b).all()
    assert not torch.allclose(a, b, atol=1e-4)
