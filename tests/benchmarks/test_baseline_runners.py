"""The baseline runners' shapes and FLOP counts must stay in step with Kiln's presets.

torchtitan and LitGPT are not installed in CI (they run on the GPU machine from .whl/), so
only the torch-free parts of the runners are tested here.
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


@pytest.mark.parametrize("name", ["125m", "1b"])
def test_shapes_match_kiln_presets(runner, name):
    shape, cfg = runner.SHAPES[name], get_preset(name)
    assert (shape["dim"], shape["n_layers"], shape["n_heads"]) == (cfg.dim, cfg.n_layers, cfg.n_heads)
    assert shape["n_kv_heads"] == cfg.kv_heads
    assert shape["ffn_hidden"] == cfg.hidden_dim
    assert shape["vocab_size"] == cfg.vocab_size
    assert shape["tie"] == cfg.tie_embeddings
    assert shape["rope_theta"] == cfg.rope_theta


@pytest.mark.parametrize(("name", "params"), [("125m", 134_105_856), ("1b", 1_235_814_400)])
def test_flops_are_kilns(runner, name, params):
    """torchtitan built these shapes with exactly these parameter counts (meta-device check)."""
    cfg = get_preset(name, max_seq_len=2048)
    assert count_params(cfg) == params
    flops, n_matmul, source = runner.kiln_flops_per_token(runner.SHAPES[name], 2048)
    assert flops == flops_per_token(cfg, 2048)
    assert source == "kiln model.flops.flops_per_token"
    # matmul weights = all parameters less the RMSNorm gains and (when untied) the input embedding
    norms = (2 * cfg.n_layers + 1) * cfg.dim
    assert n_matmul == params - norms - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.dim)


def test_cli_defaults(runner):
    args = runner.parse_args(["--shape", "1b", "--no-compile", "--", "--debug.print_config"])
    assert (args.shape, args.compile, args.cuda_graphs, args.attn) == ("1b", False, True, "flex")
    assert args.tt_args == ["--debug.print_config"]
