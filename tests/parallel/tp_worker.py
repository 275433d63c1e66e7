"""Run under torchrun (gloo, CPU): tensor-parallel forward and backward of tiny dense, MoE and hybrid
models against the same model unsplit in this process, sharded checkpoints across TP sizes, and
expert parallelism (ep_worker.py). Rank 0 writes the largest differences to OUT/tp.json, every rank
OUT/ep_RANK.json; the tests assert on them."""

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch.distributed.tensor.debug import CommDebugMode
from torch.nn import functional as F

from hybridlm.models import build_model
from hybridlm.nn.moe import MoEStats
from hybridlm.parallel.mesh import Layout, build_mesh
from hybridlm.parallel.checkpoint import load_sharded, save_sharded
from hybridlm.parallel.tensor import full_state_dict, full_tensor, parallelize_tensor
from hybridlm.presets import get_preset

MODELS = {
    "dense": ("llama-tiny", {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "d_ff": 96}),
    "moe": ("mixtral-tiny", {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "d_ff": 64,
                             "n_experts": 4, "moe_impl": "fast"}),
    "hybrid": ("nemotron-h-tiny", {"d_model": 64, "d_ff": 96}),
}


def loss_of(model, ids, moe):
    stats = MoEStats() if moe else None
    logits = model(ids, moe_stats=stats) if moe else model(ids)
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    return loss + (0.02 * stats.aux_loss if moe else 0.0)


def compare(name, preset, overrides, tp_mesh):
    torch.manual_seed(0)
    ref = build_model(get_preset(preset, **overrides))
    torch.manual_seed(0)
    model = build_model(get_preset(preset, **overrides))
    ids = torch.randint(0, ref.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    ref_loss = loss_of(ref, ids, name == "moe")
    ref_loss.backward()
    tp = parallelize_tensor(model, tp_mesh)
    with CommDebugMode() as comm:  # counts the collectives DTensor issues
        loss = loss_of(model, ids, name == "moe")
        loss.backward()
    all_reduces = comm.get_comm_counts().get(funcol.all_reduce, 0) + \
        comm.get_comm_counts().get(torch.ops.c10d_functional.all_reduce, 0)
    grads = dict(model.named_parameters())
    worst = 0.0
    for pname, p in ref.named_parameters():
        g = full_tensor(tp, pname, grads[pname].grad)
        scale = p.grad.abs().max().item() + 1e-12
        worst = max(worst, (g - p.grad).abs().max().item() / scale)
    local_params = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())
    return {"loss": loss.item(), "ref_loss": ref_loss.item(), "grad_rel_err": worst, "n_split": len(tp.specs),
            "local_params": local_params, "full_params": sum(p.numel() for p in ref.parameters()),
            "all_reduces": all_reduces}


def step(model, opt, ids):
    loss = loss_of(model, ids, False)
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss.item()


def checkpoint_round_trip(tp_mesh, out):
    """tp 1 -> tp 2: a plain model's sharded checkpoint resumes split; tp 2 -> tp 1: the split model's
    checkpoint (OUT/ckpt_tp2) is loaded by the test in a plain process, against OUT/full.safetensors."""
    from safetensors.torch import save_file

    preset, overrides = MODELS["hybrid"]
    cfg = get_preset(preset, **overrides)
    ids = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    plain = build_model(cfg)
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-2, foreach=False)
    step(plain, plain_opt, ids)
    save_sharded(f"{out}/ckpt_tp1", plain, None, plain_opt, {"step": 1})
    torch.manual_seed(7)  # other weights: everything must come from the checkpoint
    split = build_model(cfg)
    tp = parallelize_tensor(split, tp_mesh)
    split_opt = torch.optim.AdamW(split.parameters(), lr=1e-2, foreach=False)
    state = load_sharded(f"{out}/ckpt_tp1", split, tp, split_opt)
    params = dict(split.named_parameters())
    load_err = max((full_tensor(tp, n, params[n].detach()) - p).abs().max().item() for n, p in plain.named_parameters())
    moment_err = max((full_tensor(tp, n, split_opt.state[params[n]]["exp_avg_sq"]) - plain_opt.state[p]["exp_avg_sq"])
                     .abs().max().item() for n, p in plain.named_parameters())
    loss_plain, loss_split = step(plain, plain_opt, ids), step(split, split_opt, ids)
    after = max((full_tensor(tp, n, params[n].detach()) - p).abs().max().item() for n, p in plain.named_parameters())
    save_sharded(f"{out}/ckpt_tp2", split, tp, split_opt, {"step": 2})
    full = full_state_dict(split, tp)
    moments = {f"{n}::exp_avg": full_tensor(tp, n, split_opt.state[params[n]]["exp_avg"]) for n in params}
    if dist.get_rank() == 0:
        save_file({k: v.contiguous() for k, v in (full | moments).items()}, f"{out}/full.safetensors")
    return {"saved_step": state["step"], "load_err": load_err, "moment_err": moment_err, "loss_plain": loss_plain,
            "loss_split": loss_split, "param_err_after_step": after, "next_loss": loss_of(split, ids, False).item()}


def main(out):
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    mesh = build_mesh(Layout(tp=dist.get_world_size()), torch.device("cpu"))
    results = {name: compare(name, preset, overrides, mesh["tp"]) for name, (preset, overrides) in MODELS.items()}
    results["checkpoint"] = checkpoint_round_trip(mesh["tp"], out)
    sys.path.insert(0, os.path.dirname(__file__))
    import cp_worker  # expert and context parallelism in the same launch (one process start-up fewer)
    import ep_worker

    ep_worker.run(out)
    cp_worker.run(out)
    if dist.get_rank() == 0:
        with open(f"{out}/tp.json", "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
