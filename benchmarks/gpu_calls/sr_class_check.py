"""Where does StochasticRoundingAdamW on CUDA (compiled) part from the CPU? One step, then three."""
import torch

from trainer import optim

torch.manual_seed(0)
init, grads = torch.randn(1000, 48).bfloat16(), [torch.randn(1000, 48).bfloat16() for _ in range(3)]
for steps in (1, 3):
    res = {}
    for label, dev, compiled in (("cpu", "cpu", False), ("cuda-eager", "cuda", False), ("cuda-compiled", "cuda", True)):
        w = torch.nn.Parameter(init.clone().to(dev))
        opt = optim.StochasticRoundingAdamW([w], lr=1e-3, compiled=compiled)
        for g in grads[:steps]:
            w.grad = g.to(dev)
            opt.step()
        torch.cuda.synchronize()
        res[label] = w.detach().cpu()
    for label in ("cuda-eager", "cuda-compiled"):
        print(steps, "step(s)", label, "differs from cpu:", float((res[label] != res["cpu"]).float().mean()))
