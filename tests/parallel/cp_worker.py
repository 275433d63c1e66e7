"""Run under torchrun (gloo, CPU), inside tp_worker.py's launch: context parallelism over 2 ranks (each
holds half of every sequence), with ring attention and with the all-gathered K/V, against the unsplit
model. Rank 0 writes OUT/cp.json."""

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.nn import functional as F

from hybridlm.models import build_model
from hybridlm.parallel.context import context_parallel_forward
from hybridlm.presets import get_preset

MODELS = {
    "dense": ("llama-tiny", {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "d_ff": 96}),
    "moe": ("mixtral-tiny", {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "d_ff": 64, "n_experts": 4}),
    "learned_positions": ("gpt2-tiny", {"n_layers": 2, "d_model": 64, "n_heads": 2, "d_ff": 128}),
}
T = 24


def compare(preset, overrides, mesh, attention):
    cp, rank = mesh.size(), mesh.get_local_rank()
    cfg = get_preset(preset, **overrides)
    ids = torch.randint(0, cfg.vocab_size, (2, T), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    ref = build_model(cfg)
    logits = ref(ids)
    ref_loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    ref_loss.backward()
    torch.manual_seed(0)
    model = build_model(cfg)
    chunk = T // cp
    local = context_parallel_forward(model, ids[:, rank * chunk:(rank + 1) * chunk], mesh, T, attention)
    targets = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], dim=1)[:, rank * chunk:(rank + 1) * chunk]
    loss = F.cross_entropy(local.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum") / (2 * (T - 1))
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total)
    ref_params, worst = dict(ref.named_parameters()), 0.0
    for name, p in model.named_parameters():
        g = p.grad.clone()
        dist.all_reduce(g)  # replicated parameters: the cp group's all-reduce
        r = ref_params[name].grad
        worst = max(worst, ((g - r).abs().max() / (r.abs().max() + 1e-12)).item())
    logit_err = (local - logits[:, rank * chunk:(rank + 1) * chunk]).abs().max().item()
    return {"loss": total.item(), "ref_loss": ref_loss.item(), "grad_rel_err": worst, "logit_err": logit_err}


def run(out):
    mesh = init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=("cp",))
    results = {f"{name}-{attention}": compare(preset, overrides, mesh["cp"], attention)
               for name, (preset, overrides) in MODELS.items() for attention in ("ring", "allgather")}
    if dist.get_rank() == 0:
        with open(f"{out}/cp.json", "w") as f:
            json.dump(results, f)


def main(out):
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    run(out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
