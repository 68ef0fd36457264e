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
def test_flops_match_an_independent_count(runner, name, params):
    """The runner's FLOPs per token equal 6 N + 12 L d T with N counted from the real model's matmuls.

    N is read off `Llama(cfg)` built on the meta device: the weights of every `nn.Linear`
    (attention, FFN and the output head, which is a vocab x dim matmul even when tied), not
    from `model.flops`. 1_235_814_400 is the published parameter count of Llama-3.2-1B.
    """
    import torch
    from torch import nn

    from model.llama import Llama

    cfg = get_preset(name, max_seq_len=2048)
    with torch.device("meta"):
        model = Llama(cfg)
    assert sum(p.numel() for p in model.parameters()) == params == count_params(cfg)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    n_matmul = sum(m.weight.numel() for m in linears)  # a tied head is its own module: counted here
    assert any(m.weight.shape == (cfg.vocab_size, cfg.dim) for m in linears)  # the head is among them
    expected = 6 * n_matmul + 12 * cfg.n_layers * cfg.dim * 2048
    flops, runner_matmul, source = runner.kiln_flops_per_token(runner.SHAPES[name], 2048)
    assert flops == expected == flops_per_token(cfg, 2048)
    assert runner_matmul == n_matmul
    assert source == "kiln model.flops.flops_per_token"


def test_cli_defaults(runner):
    args = runner.parse_args(["--shape", "1b", "--no-compile", "--", "--debug.print_config"])
    assert (args.shape, args.compile, args.cuda_graphs, args.attn) == ("1b", False, True, "flex")
    assert args.tt_args == ["--debug.print_config"]
