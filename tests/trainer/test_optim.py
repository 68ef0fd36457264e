"""AdamW parameter groups: 2-D weights decay, norm gains do not; every parameter is in exactly one group."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from model import Llama, get_preset
from trainer import optim
from trainer.config import OptimSection
from trainer.optim import build_optimizer, param_groups


def test_groups_split_matrices_from_gains():
    model = Llama(get_preset("debug"))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "tok_embeddings.weight" in decay["names"] and "output.weight" in decay["names"]
    assert "layers.0.attention.wq.weight" in decay["names"]
    assert "layers.0.feed_forward.w2.weight" in decay["names"]
    assert "norm.weight" in no_decay["names"] and "layers.1.ffn_norm.weight" in no_decay["names"]
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_tied_embedding_is_one_parameter_in_one_group():
    model = Llama(get_preset("debug", tie_embeddings=True))
    decay, _ = param_groups(model, 0.1)
    assert "output.weight" not in decay["names"]  # named_parameters dedups the shared tensor
    assert sum(p is model.tok_embeddings.weight for p in decay["params"]) == 1


def test_optimizer_settings_and_no_fused_on_cpu():
    model = Llama(get_preset("debug"))
    opt = build_optimizer(model, OptimSection(lr=1e-3, beta1=0.8, beta2=0.9, eps=1e-6, weight_decay=0.05))
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert opt.defaults["betas"] == (0.8, 0.9) and opt.defaults["eps"] == 1e-6
    assert not opt.defaults["fused"]
    assert "names" not in opt.param_groups[0]


# -- bf16 weights: StochasticRoundingAdamW ---------------------------------------------------------
def _bf16_neighbours(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bf16 values just below and above each fp32 value (in magnitude order: toward/away from zero)."""
    bits = x.view(torch.int32)
    down = (bits & -0x10000).view(torch.float32)
    up = ((bits & -0x10000) + 0x10000).view(torch.float32)
    return down, up


def test_stochastic_rounding_picks_a_neighbour_and_is_unbiased():
    x = torch.tensor([1.0 + 0.3 * 2**-7, -2.0 - 0.75 * 2**-6, 3.0e-3 * 1.1], dtype=torch.float32)
    down, up = _bf16_neighbours(x)
    trials = 4000
    noise = torch.stack([optim._lowbias32(torch.arange(3, dtype=torch.int64) + optim.mix32(i, 7)) & 0xFFFF
                         for i in range(trials)]).to(torch.int32)
    rounded = optim.round_bf16_stochastic(x.expand(trials, 3).contiguous(), noise).float()
    assert bool(((rounded == down) | (rounded == up)).all())
    # the mean lands on x, where round-to-nearest is off by up to half a step
    assert torch.allclose(rounded.mean(0), x, rtol=0, atol=float((up - down).abs().max()) * 0.03)
    exact = torch.tensor([1.0, -0.5, 0.0078125])  # already bf16: never moved
    assert torch.equal(optim.round_bf16_stochastic(exact, torch.zeros(3, dtype=torch.int32)).float(), exact)


def test_noise_is_a_fixed_function_of_step_tensor_and_element():
    assert optim.mix32(3, 1) == optim.mix32(3, 1) != optim.mix32(4, 1) != optim.mix32(3, 2)
    values = optim._lowbias32(torch.arange(1 << 16, dtype=torch.int64) + optim.mix32(1, 0)) & 0xFFFF
    assert int(values.min()) >= 0 and int(values.max()) < 1 << 16
    counts = torch.bincount(values >> 12, minlength=16).float()  # 16 buckets of the 16-bit noise
    assert float(counts.min()) > 0.9 * (1 << 12) and float(counts.max()) < 1.1 * (1 << 12)


def test_bf16_adamw_matches_fp32_adamw_to_one_bf16_step():
    torch.manual_seed(0)
    ref = torch.nn.Parameter(torch.randn(64, 32).bfloat16().float())
    ours = torch.nn.Parameter(ref.detach().bfloat16())
    kw = {"lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}
    fp32, sr = torch.optim.AdamW([ref], **kw), optim.StochasticRoundingAdamW([ours], **kw)  # type: ignore[arg-type]
    for _ in range(3):
        grad = torch.randn(64, 32)
        ref.grad, ours.grad = grad.bfloat16().float(), grad.bfloat16()
        # one step from the same (bf16) weights: the fp32 result, then rounded either way
        ref.data = ours.detach().float()
        fp32.step()
        sr.step()
        down, up = _bf16_neighbours(ref.detach())
        assert bool(((ours.float() == down) | (ours.float() == up) | (ours.float() == ref)).all())
    assert torch.allclose(sr.state[ours]["exp_avg"], fp32.state[ref]["exp_avg"], rtol=1e-6, atol=1e-7)
    assert sr.state[ours]["exp_avg"].dtype == torch.float32 and int(sr.state[ours]["step"]) == 3


def test_updates_smaller_than_half_a_bf16_step_still_move_the_weights():
    """At 1.0 the bf16 step is 2**-7; an AdamW update of 1e-3 rounds away to nearest, but not stochastically."""
    weights = torch.nn.Parameter(torch.ones(20000, dtype=torch.bfloat16))
    opt = optim.StochasticRoundingAdamW([weights], lr=1e-3, weight_decay=0.0)
    for _ in range(50):
        weights.grad = torch.ones_like(weights)
        opt.step()
    assert abs(float(weights.detach().float().mean()) - (1 - 50e-3)) < 2e-3  # round-to-nearest would leave 1.0
    assert len(torch.unique(weights)) > 1


def test_a_shard_updated_at_its_offset_rounds_as_the_whole_tensor_does():
    """FSDP ranks each update a shard; the noise is indexed by the element's place in the whole tensor, so
    the shards together hold exactly what one unsharded update writes, on any number of ranks."""
    torch.manual_seed(0)
    weights, grad = torch.randn(1000).bfloat16(), torch.randn(1000).bfloat16()
    scalars = torch.tensor([1e-3, 0.9, 0.95, 0.1, 1e-8, 0.1, 0.05 ** 0.5])
    moments = [torch.full((1000,), 0.01), torch.full((1000,), 1e-4)]
    whole, shards = weights.clone(), weights.clone()
    optim.adamw_bf16_update(whole, grad, moments[0].clone(), moments[1].clone(), scalars, salt=12345, offset=0)
    for start, stop in ((0, 384), (384, 1000)):
        optim.adamw_bf16_update(shards[start:stop], grad[start:stop], moments[0][start:stop].clone(),
                                moments[1][start:stop].clone(), scalars, salt=12345, offset=start)
    assert torch.equal(whole, shards) and not torch.equal(whole, weights)


def test_bf16_model_gets_stochastic_rounding_adamw():
    model = Llama(get_preset("debug")).to(torch.bfloat16)
    opt = build_optimizer(model, OptimSection())
    assert isinstance(opt, optim.StochasticRoundingAdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    model.norm.weight.data = model.norm.weight.data.float()
    with pytest.raises(ValueError, match="mix bf16"):
        build_optimizer(model, OptimSection())


def _trajectories(steps: int, lr: float) -> dict[str, torch.Tensor]:
    """The same weights and bf16 gradients through fp32 AdamW and both bf16 updates; each final weight."""
    torch.manual_seed(0)
    init = torch.randn(4096).bfloat16()
    grads = [torch.randn(4096).bfloat16() for _ in range(steps)]
    kw = {"lr": lr, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}
    weights = {name: torch.nn.Parameter(init.float() if name == "fp32" else init.clone())
               for name in ("fp32", "stochastic", "kahan")}
    opts = {"fp32": torch.optim.AdamW([weights["fp32"]], **kw),  # type: ignore[arg-type]
            "stochastic": optim.StochasticRoundingAdamW([weights["stochastic"]], **kw),  # type: ignore[arg-type]
            "kahan": optim.StochasticRoundingAdamW([weights["kahan"]], kahan=True, **kw)}  # type: ignore[arg-type]
    for grad in grads:
        for name, w in weights.items():
            w.grad = grad.float() if name == "fp32" else grad.clone()
            opts[name].step()
    compensation = opts["kahan"].state[weights["kahan"]][optim.COMPENSATION]
    assert compensation.dtype == torch.bfloat16
    return {**{name: w.detach().float() for name, w in weights.items()},
            "kahan+residual": weights["kahan"].detach().float() + compensation.float()}


def test_kahan_bf16_weights_follow_fp32_adamw_closer_than_stochastic_rounding():
    """300 updates of ~1e-4 against weights ~1 (bf16 step 2**-7..2**-8): each is below half a bf16 step.
    Kahan's bf16 weight is fp32 AdamW's rounded (within one bf16 step everywhere), its weight plus
    residual holds fp32's to a few hundredths of a step, and both are closer on average than the
    stochastic rounding's random walk."""
    w = _trajectories(steps=300, lr=1e-4)
    step = torch.finfo(torch.bfloat16).eps * w["fp32"].abs().clamp(min=2**-10)
    kahan_err, sr_err = (w["kahan"] - w["fp32"]).abs(), (w["stochastic"] - w["fp32"]).abs()
    assert bool((kahan_err <= step).all())
    assert bool(((w["kahan+residual"] - w["fp32"]).abs() <= 0.05 * step).all())
    assert float(kahan_err.mean()) < 0.5 * float(sr_err.mean())
    assert not torch.equal(w["kahan"], _trajectories(steps=300, lr=0.0)["kahan"])  # the small updates did land


def test_kahan_resume_keeps_the_bf16_residual_and_continues_bit_for_bit():
    torch.manual_seed(1)
    init, grads = torch.randn(64, 8).bfloat16(), [torch.randn(64, 8).bfloat16() for _ in range(6)]

    def run(split: int | None) -> torch.Tensor:
        weights = torch.nn.Parameter(init.clone())
        opt = optim.StochasticRoundingAdamW([weights], lr=1e-4, kahan=True)
        for i, grad in enumerate(grads):
            if i == split:  # a fresh optimizer from the saved state, as a resume makes one
                saved = copy.deepcopy(opt.state_dict())
                opt = optim.StochasticRoundingAdamW([weights], lr=1e-4, kahan=True)
                opt.load_state_dict(saved)
                state = opt.state[weights]
                assert state[optim.COMPENSATION].dtype == torch.bfloat16 and state["exp_avg"].dtype == torch.float32
                assert bool(state[optim.COMPENSATION].abs().max() > 0)
            weights.grad = grad.clone()
            opt.step()
        return weights.detach()

    assert torch.equal(run(None), run(3))


def test_kahan_picks_up_a_state_without_residuals():
    """A state saved by the stochastic update (no residuals) loaded into a Kahan one gets zero residuals and
    rounds to nearest from there, rather than silently staying stochastic."""
    weights = torch.nn.Parameter(torch.ones(1000, dtype=torch.bfloat16))
    sr = optim.StochasticRoundingAdamW([weights], lr=1e-3, weight_decay=0.0)
    weights.grad = torch.ones_like(weights)
    sr.step()
    kahan = optim.StochasticRoundingAdamW([weights], lr=1e-3, weight_decay=0.0, kahan=True)
    kahan.load_state_dict(sr.state_dict())
    before = weights.detach().clone()
    kahan.step()
    assert optim.COMPENSATION in kahan.state[weights]
    changed = weights.detach() != before  # to nearest, one update of ~1e-3 against a 2**-8..2**-7 spacing: none
    assert not bool(changed.any()) and bool(kahan.state[weights][optim.COMPENSATION].abs().min() > 0)


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="inductor on CPU needs a C++ compiler")
def test_compiled_kahan_update_keeps_its_residual_as_eager_does():
    """Inductor keeps a fused kernel's intermediates in fp32 (it does not emulate precision casts), so a
    ``.to(bfloat16).float()`` round trip inside the update would vanish and take the residual with it;
    the rounding on the bits does not. Compiled on CPU, the update writes exactly the eager bits."""
    torch.manual_seed(0)
    init, grads = torch.randn(4096).bfloat16(), [torch.randn(4096).bfloat16() for _ in range(3)]
    results = []
    for compiled in (False, True):
        weights = torch.nn.Parameter(init.clone())
        opt = optim.StochasticRoundingAdamW([weights], lr=1e-3, kahan=True, compiled=compiled)
        for grad in grads:
            weights.grad = grad.clone()
            opt.step()
        results.append((weights.detach(), opt.state[weights][optim.COMPENSATION]))
    (eager_w, eager_c), (compiled_w, compiled_c) = results
    assert torch.equal(eager_w, compiled_w) and torch.equal(eager_c, compiled_c)
    assert float((compiled_c != 0).float().mean()) > 0.9


def test_round_bf16_nearest_is_the_cast():
    x = torch.randn(100_000) * torch.logspace(-30, 30, 100_000)
    assert torch.equal(optim.round_bf16_nearest(x), x.to(torch.bfloat16).float())
    ties = torch.tensor([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 0.0])  # halfway: to even
    assert optim.round_bf16_nearest(ties).tolist() == [1.0, 1 + 2**-6, -1.0, 0.0]


def test_bf16_update_kahan_is_chosen_by_config():
    model = Llama(get_preset("debug")).to(torch.bfloat16)
    assert build_optimizer(model, OptimSection(bf16_update="kahan")).kahan is True  # type: ignore[attr-defined]
    assert build_optimizer(model, OptimSection()).kahan is False  # type: ignore[attr-defined]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kahan", [False, True])
def test_compiled_update_on_cuda_equals_the_eager_one_on_cpu(kahan):
    torch.manual_seed(0)
    init, grads = torch.randn(1000, 48).bfloat16(), [torch.randn(1000, 48).bfloat16() for _ in range(3)]
    results = []
    for device, compiled in (("cpu", False), ("cuda", True)):
        weights = torch.nn.Parameter(init.clone().to(device))  # .to("cpu") alone would alias init
        opt = optim.StochasticRoundingAdamW([weights], lr=1e-3, compiled=compiled, kahan=kahan)
        for grad in grads:
            weights.grad = grad.to(device)
            opt.step()
        results.append(weights.detach().cpu())
    # same noise bits; the fp32 update may differ in its last bit (fused vs eager), so a rare element rounds
    # to the other neighbour
    assert (results[0] != results[1]).float().mean() < 1e-3
