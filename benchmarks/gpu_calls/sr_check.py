"""Does the compiled stochastic-rounding update round as the eager one does? (device call 6's first check)

Compares the noise hash and the whole update: eager CPU, eager CUDA, compiled CUDA."""
import torch

from trainer import optim

n = 1 << 20
for label, dev, fn in (("eager-cuda", "cuda", optim._lowbias32),
                       ("compiled-cuda", "cuda", torch.compile(optim._lowbias32, dynamic=True))):
    ref = optim._lowbias32(torch.arange(n, dtype=torch.int64) + 12345) & 0xFFFF
    got = (fn(torch.arange(n, dtype=torch.int64, device=dev) + 12345) & 0xFFFF).cpu()
    print(label, "hash mismatches:", int((ref != got).sum()), "of", n)
torch.manual_seed(0)
init, grad = torch.randn(n).bfloat16(), torch.randn(n).bfloat16()
scalars = torch.tensor([1e-3, 0.9, 0.95, 0.1, 1e-8, 0.1, 0.05 ** 0.5])
outs = {}
for label, dev, fn in (("eager-cpu", "cpu", optim.adamw_bf16_update), ("eager-cuda", "cuda", optim.adamw_bf16_update),
                       ("compiled-cuda", "cuda", torch.compile(optim.adamw_bf16_update, dynamic=True, fullgraph=True))):
    w = init.to(dev).clone()
    fn(w, grad.to(dev), torch.zeros(n, device=dev), torch.zeros(n, device=dev), scalars.to(dev),
       optim.mix32(3, 17), 0)
    outs[label] = w.cpu()
for label in ("eager-cuda", "compiled-cuda"):
    print(label, "update mismatches vs eager-cpu:", int((outs[label] != outs["eager-cpu"]).sum()), "of", n)
