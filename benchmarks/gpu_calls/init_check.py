"""Do fp32- and bf16-weight runs start from the same weights on CUDA? (call 14; the 1000-step Kahan run of
call 13 differed from its fp32 reference already at step 10: loss 8.84 vs 9.06, grad norm 13.9 vs 65.2.)

Builds the 1B preset (vocab 32000, as the quality runs) with `trainer.parallelize.build_model` under FSDP on
one rank, once per run.param_dtype, from the same seed, and prints per parameter the max |difference|
between the bf16 build and the fp32 build rounded to bf16 (0 = the same initial weights), and the stds."""

import os

import torch
import torch.distributed as dist

from model import get_preset
from trainer.config import RunSection
from trainer.parallelize import DistEnv, build_model

os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("MASTER_PORT", "29561")
dist.init_process_group("nccl", rank=0, world_size=1)
torch.cuda.set_device(0)
cfg = get_preset("1b", vocab_size=32000)
weights = {}
for param_dtype in ("float32", "bfloat16"):
    run = RunSection(device="cuda", dtype="bfloat16", param_dtype=param_dtype, parallel="fsdp")
    env = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cuda"), mode="fsdp")
    _, raw = build_model(cfg, run, env)
    weights[param_dtype] = {n: getattr(p, "full_tensor", lambda p=p: p)().detach().float().cpu()
                            for n, p in raw.named_parameters()}
    del raw
    torch.cuda.empty_cache()
worst = 0.0
for name, a in weights["float32"].items():
    b = weights["bfloat16"][name]
    diff = (a.bfloat16().float() - b).abs().max().item()
    worst = max(worst, diff)
    if diff or name.startswith(("tok_embeddings", "layers.0.", "output")):
        print(f"{name} {tuple(a.shape)} std fp32 {a.std().item():.6f} bf16 {b.std().item():.6f} max|diff| {diff:.3g}")
print(f"worst max|diff| {worst:.3g} ({'the same initial weights' if worst == 0 else 'DIFFERENT initial weights'})")
dist.destroy_process_group()
