"""Run under torchrun (gloo, CPU): a 2-stage pipeline (GPipe and 1F1B, 4 micro-batches) of tiny dense
and hybrid models against the unsplit model in this process. Rank 0 writes OUT/pp_RANK.json."""

import json
import sys

import torch
import torch.distributed as dist
from torch.nn import functional as F

from hybridlm.models import build_model
from hybridlm.parallel.mesh import Layout, build_mesh
from hybridlm.parallel.pipeline import build_schedule, build_stage, pipeline_step
from hybridlm.presets import get_preset

MODELS = {
    "dense": ("llama-tiny", {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "d_ff": 96,
                             "tie_embeddings": False}),
    "hybrid": ("nemotron-h-tiny", {"d_model": 64, "d_ff": 96}),
}


def compare(preset, overrides, schedule_name, pp_mesh):
    cfg = get_preset(preset, **overrides)
    torch.manual_seed(0)
    ref = build_model(cfg)
    torch.manual_seed(0)
    model = build_model(cfg)
    ids = torch.randint(0, cfg.vocab_size, (4, 17), generator=torch.Generator().manual_seed(1))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    logits = ref(inputs)
    ref_loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    ref_loss.backward()
    stage = build_stage(model, pp_mesh)
    schedule = build_schedule(stage, pp_mesh, n_microbatches=4, schedule=schedule_name)
    loss = pipeline_step(schedule, stage, inputs, targets)
    ref_params = dict(ref.named_parameters())
    worst, names = 0.0, []
    for name, p in stage.named_parameters():
        r = ref_params[name].grad
        worst = max(worst, ((p.grad - r).abs().max() / (r.abs().max() + 1e-12)).item())
        names.append(name)
    return {"loss": loss, "ref_loss": ref_loss.item(), "grad_rel_err": worst, "params": names,
            "n_params": sum(p.numel() for p in stage.parameters())}


def main(out):
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    mesh = build_mesh(Layout(pp=dist.get_world_size()), torch.device("cpu"))
    results = {f"{name}-{sched}": compare(preset, overrides, sched, mesh["pp"])
               for name, (preset, overrides) in MODELS.items() for sched in ("gpipe", "1f1b")}
    with open(f"{out}/pp_{dist.get_rank()}.json", "w") as f:
        json.dump(results, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
