"""Run under torchrun (gloo, CPU): expert parallelism over 2 ranks, each with its own tokens, against
the unsplit model on both ranks' tokens in this process. Each rank writes OUT/ep_RANK.json."""

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.nn import functional as F

from hybridlm.models import build_model
from hybridlm.nn.moe import MoEStats
from hybridlm.parallel.expert import parallelize_experts
from hybridlm.presets import get_preset

CONFIG = ("mixtral-tiny", {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "d_ff": 64, "n_experts": 4,
                           "moe_shared_expert_d_ff": 32})


def ce(model, ids, stats=None):
    logits = model(ids, moe_stats=stats) if stats is not None else model(ids)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


def run(out):
    """The check (process group already up); tp_worker.py calls it too, to share one launch."""
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("ep",))
    cfg = get_preset(CONFIG[0], **CONFIG[1])
    ids = torch.randint(0, cfg.vocab_size, (2 * world, 20), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    ref = build_model(cfg)
    ref_loss = ce(ref, ids)  # the whole batch's mean
    ref_loss.backward()
    torch.manual_seed(0)
    model = build_model(cfg)
    parallelize_experts(model, mesh["ep"])
    mine = ids[2 * rank:2 * rank + 2]  # this rank's own tokens
    stats = MoEStats()
    loss = ce(model, mine, stats) / world
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total)
    ref_params = dict(ref.named_parameters())
    worst, experts_here = 0.0, []
    for name, p in model.named_parameters():
        g = p.grad.clone()
        if ".experts." not in name:  # replicated: the data-parallel all-reduce DDP would do
            dist.all_reduce(g)
        else:
            experts_here.append(name)
        r = ref_params[name].grad
        worst = max(worst, ((g - r).abs().max() / (r.abs().max() + 1e-12)).item())
    with open(f"{out}/ep_{rank}.json", "w") as f:
        json.dump({"loss": total.item(), "ref_loss": ref_loss.item(), "grad_rel_err": worst,
                   "expert_params": experts_here, "routed": stats.routed.sum().item(), "local_tokens": mine.numel()}, f)


def main(out):
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    run(out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
