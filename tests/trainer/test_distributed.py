"""Data parallelism on CPU: 2 gloo processes under torchrun, exactly as on a GPU node.

- DDP: each rank runs half of the global batch; the per-step loss must equal a
  single process running the whole batch (up to the all-reduce's summation order).
- FSDP2 + DCP: a sharded run with tied embeddings is stopped after step 3, resumes
  from its sharded step-2 checkpoint and re-logs step 3 with the same loss; the
  consolidated export loads into a plain model.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.trainer.conftest import train_args, train_losses
from trainer.checkpoint import checkpoint_path, load_final
from trainer.pretrain import STOP_ENV, main

REPO_ROOT = Path(__file__).resolve().parents[2]


def torchrun(args: list[str], *, nproc: int = 2, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "trainer.pretrain", *args]
    inherited = {k: v for k, v in os.environ.items() if k != STOP_ENV}
    full_env = {**inherited, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=300)


def short(*extra: str) -> list[str]:
    return ["run.steps=4", "checkpoint.every_steps=2", "run.val_every=2", *extra]


# Each torchrun launch costs ~6-10 s of start-up here (two torch imports per rank, rendezvous):
# 12-30 s for the DDP test and 20-40 s for FSDP's two launches on a loaded 2-core box.
@pytest.mark.slow
def test_ddp_two_processes_match_one_process(pattern_data, tmp_path):
    ddp = torchrun(train_args(pattern_data, tmp_path / "ddp", *short("run.parallel=ddp")))
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    assert "2 rank(s), parallel=ddp" in ddp.stdout
    assert main(train_args(pattern_data, tmp_path / "single", *short())) == 0
    # Same global batch (micro 4 x accum 2 over all ranks), same sequences per step, same init.
    assert train_losses(tmp_path / "ddp") == pytest.approx(train_losses(tmp_path / "single"), rel=1e-5)


@pytest.mark.slow
def test_fsdp_sharded_checkpoint_resume_and_export(pattern_data, tmp_path):
    args = train_args(pattern_data, tmp_path, *short("run.parallel=fsdp", "model.overrides.tie_embeddings=true"))
    first = torchrun(args, env={STOP_ENV: "3"})
    # torchrun reports any failed rank as exit code 1 (and stops the others); rank 0 said why.
    assert first.returncode != 0 and f"stopped: after step 3 because {STOP_ENV}=3" in first.stdout, first.stderr[-3000:]
    dcp_dir = checkpoint_path(tmp_path, 2) / "dcp"
    assert {p.name for p in dcp_dir.iterdir()} >= {".metadata", "__0_0.distcp", "__1_0.distcp"}
    assert (checkpoint_path(tmp_path, 2) / "rng-rank00001.pt").is_file()
    step3_before = train_losses(tmp_path)[2]

    second = torchrun(args)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resumed from" in second.stdout and "step-00000002" in second.stdout
    losses = train_losses(tmp_path)
    assert len(losses) == 4 and losses[2] == pytest.approx(step3_before, rel=1e-6)
    model, cfg = load_final(tmp_path / "final")
    assert cfg.tie_embeddings and model.output.weight is model.tok_embeddings.weight
    assert torch.isfinite(model(torch.zeros(1, 4, dtype=torch.long))[0]).all()


@pytest.mark.filterwarnings("ignore:DTensor random operators")  # CPU meshes: harmless for init
def test_single_process_fsdp_runs_without_torchrun(pattern_data, tmp_path):
    """parallel=fsdp in one plain process: a 1-rank group (torchtitan's single-GPU recipe)."""
    assert main(train_args(pattern_data, tmp_path, *short("run.parallel=fsdp"))) == 0
    assert (checkpoint_path(tmp_path, 4) / "dcp" / ".metadata").is_file()
    assert not torch.distributed.is_initialized()  # the group is torn down after the run
    assert len(train_losses(tmp_path)) == 4 and (tmp_path / "final" / "config.json").is_file()


@pytest.mark.filterwarnings("ignore:DTensor random operators")
def test_fsdp_fused_loss_on_a_tied_head_learns_what_the_plain_head_learns(pattern_data, tmp_path):
    """Under FSDP the head's weight is the root's gathered (tied) embedding table; the fused loss reads it
    directly, and its gradient must reach the sharded parameter through FSDP's reduce-scatter."""
    common = short("run.parallel=fsdp", "model.overrides.tie_embeddings=true")
    assert main(train_args(pattern_data, tmp_path / "plain", *common)) == 0
    assert main(train_args(pattern_data, tmp_path / "fused", *common, "run.fused_loss=true",
                           "run.fused_loss_chunk=40")) == 0
    assert train_losses(tmp_path / "fused") == pytest.approx(train_losses(tmp_path / "plain"), rel=1e-5)


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_on_a_different_number_of_processes(pattern_data, tmp_path):
    """A run sharded over 2 ranks resumes on 1 (DCP reshards on load); the global batch, and so the
    next step's loss, does not depend on the world size because grad_accum_steps counts across ranks."""
    args = train_args(pattern_data, tmp_path, *short("run.parallel=fsdp", "data.grad_accum_steps=2"))
    first = torchrun(args, env={STOP_ENV: "3"})
    assert first.returncode != 0 and f"{STOP_ENV}=3" in first.stdout, first.stderr[-3000:]
    step3_on_two = train_losses(tmp_path)[2]

    second = torchrun(args, nproc=1)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resumed from" in second.stdout and "step-00000002" in second.stdout
    losses = train_losses(tmp_path)
    assert len(losses) == 4 and losses[2] == pytest.approx(step3_on_two, rel=1e-5)


@pytest.mark.filterwarnings("ignore:DTensor random operators")
@pytest.mark.parametrize("update", ["stochastic", "kahan"])
def test_bf16_weights_learn_and_resume_exactly_under_fsdp(pattern_data, tmp_path, monkeypatch, update):
    """run.param_dtype=bfloat16: bf16 shards, fp32 moments (StochasticRoundingAdamW), learns like fp32
    weights; a stopped run resumes to the same losses bit for bit (the rounding noise is a hash, not a draw;
    kahan: its bf16 residuals are checkpointed with the moments)."""
    common = short("run.parallel=fsdp", "run.steps=6", "run.param_dtype=bfloat16", f"optim.bf16_update={update}")
    assert main(train_args(pattern_data, tmp_path / "straight", *common)) == 0
    assert main(train_args(pattern_data, tmp_path / "fp32", *short("run.parallel=fsdp", "run.steps=6"))) == 0
    bf16, fp32 = train_losses(tmp_path / "straight"), train_losses(tmp_path / "fp32")
    assert bf16[-1] < bf16[0] - 0.1 and bf16 == pytest.approx(fp32, rel=2e-2)
    monkeypatch.setenv(STOP_ENV, "3")
    main(train_args(pattern_data, tmp_path / "resumed", *common))
    monkeypatch.delenv(STOP_ENV)
    assert main(train_args(pattern_data, tmp_path / "resumed", *common)) == 0
    assert train_losses(tmp_path / "resumed") == bf16
    model, _ = load_final(tmp_path / "straight" / "final")
    assert model.tok_embeddings.weight.dtype == torch.float32  # exported at checkpoint.export_dtype


@pytest.mark.filterwarnings("ignore:DTensor random operators")
def test_fsdp_reduces_in_fp32_over_several_ranks_and_in_the_compute_dtype_on_one():
    from kiln.config import load_config
    from trainer import parallelize
    from trainer.config import TrainConfig
    from trainer.parallelize import DistEnv, fsdp_reduce_dtype

    def env(world_size: int) -> DistEnv:
        return DistEnv(0, 0, world_size, torch.device("cpu"), "fsdp")

    assert fsdp_reduce_dtype(env(2)) is torch.float32 and fsdp_reduce_dtype(env(8)) is torch.float32
    assert fsdp_reduce_dtype(env(1)) is None  # MixedPrecisionPolicy: reduce in param_dtype
    cfg = load_config(TrainConfig, None, ["model.preset=debug", "run.device=cpu", "run.parallel=fsdp"])
    model, _ = parallelize.build_model(cfg.model_config(), cfg.run, parallelize.init_distributed(cfg.run))
    for module in (model, model.layers[0]):  # the root and a block get the one-rank policy
        group = module._get_fsdp_state()._fsdp_param_group
        assert group is not None and group.mp_policy.reduce_dtype is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_one_rank_fsdp_gradients_are_bitwise_those_of_an_fp32_reduce(monkeypatch, param_dtype):
    """On one rank the reduce-scatter sums nothing, so reducing bf16 gradients in bf16 (no fp32
    copy) must give exactly the gradients the fp32 reduce gives, for fp32 and bf16 weights."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from kiln.config import load_config
    from trainer import parallelize
    from trainer.config import TrainConfig

    cfg = load_config(TrainConfig, None, ["model.preset=debug", "run.device=cuda", "run.parallel=fsdp",
                                          f"run.param_dtype={param_dtype}"])
    dist = parallelize.init_distributed(cfg.run)
    tokens = torch.randint(0, cfg.model_config().vocab_size, (2, 65), generator=torch.Generator().manual_seed(0))
    x, y = tokens[:, :-1].to(dist.device), tokens[:, 1:].to(dist.device)
    grads = []
    for reduce in (torch.float32, None):
        monkeypatch.setattr(parallelize, "fsdp_reduce_dtype", lambda _dist, reduce=reduce: reduce)
        model, raw = parallelize.build_model(cfg.model_config(), cfg.run, dist)
        group = model.layers[0]._get_fsdp_state()._fsdp_param_group  # the policy did reach FSDP
        assert group is not None and group.mp_policy.reduce_dtype is reduce
        with sdpa_kernel(SDPBackend.MATH):  # deterministic attention backward
            model(x, y)[1].backward()
        grads.append({n: p.grad.full_tensor() for n, p in raw.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        assert grad.dtype == getattr(torch, param_dtype) and torch.equal(grad, grads[1][name]), name
