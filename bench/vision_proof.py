"""Both vision-language designs learn to answer questions about pictures; the text-only model cannot.

    python -m bench.vision_proof [--decoders transformer,hybrid] [--steps 500] [--threads 1]

On the synthetic shapes task (multimodal/shapes.py: colour, shape, count and left/right questions
about 32x32 pictures, answers uniform given the question), for each decoder kind:
  1. the image encoder is pre-trained CLIP-style with hybridlm's trainer (task:shapes-captions);
  2. a text-only LM is trained on the questions and answers (it sees the <image> marker, not the
     picture): it learns the answer format and nothing more, so it stays at chance;
  3. flamingo: that LM frozen, the ViT (from CLIP), Perceiver Resampler and gated cross-attention
     trained; at step 0 its logits equal the text-only LM's bit for bit (checked here);
  4. tokens (PaLM-E/LLaVA): the same frozen LM, the ViT and the MLP projector trained.
Accuracy is on held-out scenes never trained on: the argmax after the question, and the first
token of greedy generation through the KV cache (`generate_with_images`), which must agree.
Writes a few held-out pictures with the models' answers (--examples DIR). A short table, then one
JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

from .common import emit_json, environment, print_table, progress

LM = dict(d_model=64, n_heads=4, d_ff=128, max_seq_len=64, mamba_head_dim=16, d_state=16, mamba_chunk_size=16)
PATTERNS = {"transformer": "*-*-", "hybrid": "M-*-"}
VISION = dict(image_size=32, patch_size=16, d_vision=64, n_layers=2, n_heads=4, d_ff=128, n_latents=8,
              cross_every=1, projector="mlp", mean=(0.5,) * 3, std=(0.5,) * 3)


def pretrain_clip(steps: int, work: Path, threads: int, seed: int):
    """The ViT, pre-trained contrastively on (picture, caption) pairs with hybridlm's trainer."""
    from hybridlm.config import ModelConfig
    from hybridlm.multimodal import shapes
    from hybridlm.multimodal.clip import ClipModel
    from hybridlm.multimodal.config import VisionConfig
    from hybridlm.train import TrainConfig, train

    torch.manual_seed(seed)
    text = ModelConfig(vocab_size=len(shapes.WORDS), d_model=64, n_heads=4, d_ff=128, n_layers=2, max_seq_len=16,
                       position="learned", family="encoder", mlp="gelu", norm="layernorm")
    model = ClipModel(text, VisionConfig(**VISION))
    cfg = TrainConfig(preset="bert-tiny", data_dir="task:shapes-captions", out_dir=str(work / "clip"),
                      max_steps=steps, seq_len=shapes.ShapesCaptions.MAX_WORDS, micro_batch_size=64, lr=2e-3,
                      warmup_steps=min(20, steps), weight_decay=0.0, eval_every=0, eval_sequences=256, save_every=0,
                      export_hf=False, plot=False, precision="fp32", device="cpu", threads=threads,
                      peak_flops=1e12, seed=seed)
    result = train(cfg, model=model)
    return model.eval(), result


@torch.no_grad()
def retrieval_accuracy(clip, n: int = 256) -> float:
    """Held-out image -> caption top-1 among n captions."""
    from hybridlm.multimodal.shapes import ShapesCaptions

    batch = ShapesCaptions("val").batch(0, n)
    images, texts, _ = clip(batch.pixels, batch.ids, batch.mask)
    sims = images @ texts.T
    # identical captions (same scene layout) count as right
    right = [bool((batch.ids[int(sims[i].argmax())] == batch.ids[i]).all()) for i in range(n)]
    return sum(right) / n


@torch.no_grad()
def generated_accuracy(model, task, cfg, n: int) -> float:
    """First greedy token of `generate_with_images` (prefill + KV cache) == the answer, over n held-out examples."""
    from hybridlm.generation.sampling import SamplingConfig
    from hybridlm.multimodal.prompt import generate_with_images

    batch = task.batch(0, n, cfg)
    prompts = [row[:7] for row in batch.ids.tolist()]
    out = generate_with_images(model, prompts, list(batch.pixels[:, None]),
                               SamplingConfig(max_new_tokens=1, temperature=0.0)).tokens
    return sum(o[:1] == [a] for o, a in zip(out, batch.answers.tolist())) / n


def run_decoder(kind: str, clip, args) -> tuple[list[dict], dict]:
    from hybridlm.config import ModelConfig
    from hybridlm.models.decoder import Decoder
    from hybridlm.multimodal import shapes
    from hybridlm.multimodal.config import VisionConfig
    from hybridlm.multimodal.model import VisionLanguageModel
    from hybridlm.multimodal.training import answer_accuracy, fit

    train_task, val_task = shapes.ShapesTask("train", args.seed), shapes.ShapesTask("val", args.seed)
    lm_cfg = ModelConfig(vocab_size=len(shapes.WORDS), layer_pattern=PATTERNS[kind], **LM)
    torch.manual_seed(args.seed)
    text = Decoder(lm_cfg)
    vcfg = VisionConfig(design="tokens", image_token_id=shapes.IMAGE, **VISION)
    progress(f"{kind}: text-only LM")
    fit_text = fit(text, list(text.parameters()), train_task, vcfg, args.text_steps, lr=3e-3, desc=f"{kind} text")
    rows = [{"decoder": kind, "model": "text-only", "trained": "all (no pixels)", **_fit_fields(fit_text),
             **_scores(text, val_task, vcfg, args.eval), "generate_acc": None}]
    models = {"text-only": text}
    for design in ("flamingo", "tokens"):
        torch.manual_seed(args.seed + 1)
        vcfg = VisionConfig(design=design, image_token_id=shapes.IMAGE, **VISION)
        model = VisionLanguageModel(lm_cfg, vcfg, decoder=copy.deepcopy(text)).eval()
        model.vision.load_state_dict(clip.vision.state_dict())
        batch = val_task.batch(0, 32, vcfg)
        ids = batch.ids if design == "flamingo" else None
        bitwise = None
        if design == "flamingo":
            with torch.no_grad():
                bitwise = torch.equal(model(ids, list(batch.pixels[:, None])), text(ids))
        progress(f"{kind}: {design}")
        params, trained = _trainable(model, design, args)

        def report(step: int, loss: float) -> None:
            if step % 250 == 0:
                progress(f"{kind} {design} step {step}: loss {loss:.3f}, held-out accuracy "
                         f"{answer_accuracy(model, val_task, vcfg, 256):.3f} (first 256)")

        result = fit(model, params, train_task, vcfg, args.steps, lr=args.lr, desc=f"{kind} {design}", on_step=report)
        rows.append({"decoder": kind, "model": design, "trained": trained, **_fit_fields(result),
                     **_scores(model, val_task, vcfg, args.eval),
                     "generate_acc": generated_accuracy(model, val_task, vcfg, args.eval),
                     "gates_zero_bitwise": bitwise})
        models[design] = model
    return rows, models


def _trainable(model, design: str, args) -> tuple[list, str]:
    """The parameters a design trains, and their description: the new parts (resampler and gated
    cross-attention, or projector), the ViT unless --vit frozen, the LM only for tokens with
    --tokens-lm trained (LLaVA's second stage); Flamingo's LM is always frozen."""
    names = [n for n, _ in model.named_parameters()]
    train_lm = design == "tokens" and args.tokens_lm == "trained"
    keep = [n for n in names if (not n.startswith("decoder.") or train_lm) and (not n.startswith("vision.") or args.vit == "trained")]
    params = dict(model.named_parameters())
    parts = ["resampler + gated xattn" if design == "flamingo" else "projector"]
    parts += ["ViT"] if args.vit == "trained" else []
    parts += ["LM"] if train_lm else []
    frozen = [p for p, on in (("ViT", args.vit != "trained"), ("LM", not train_lm)) if on]
    return [params[n] for n in keep], " + ".join(parts) + (f" ({', '.join(frozen)} frozen)" if frozen else "")


def _scores(model, task, cfg, n: int) -> dict:
    from hybridlm.multimodal.training import answer_accuracy

    acc = answer_accuracy(model, task, cfg, n, by_kind=True)
    return {"held_out_acc": acc.pop("all"), **{f"acc_{k}": v for k, v in sorted(acc.items())}}


def _fit_fields(result: dict) -> dict:
    return {"steps": result["steps"], "train_s": round(result["seconds"], 1), "final_loss": round(result["loss"], 4)}


@torch.no_grad()
def write_examples(models: dict, out: Path, n: int, seed: int) -> list[dict]:
    """n held-out pictures (upscaled 3x, nearest) and each model's answer."""
    from PIL import Image

    from hybridlm.multimodal import shapes
    from hybridlm.multimodal.training import _logits

    out.mkdir(parents=True, exist_ok=True)
    task = shapes.ShapesTask("val", seed)
    examples = []
    for i in range(n):
        entry = {"file": f"example_{i}.png"}
        for name, model in models.items():
            cfg = getattr(model, "vision_config", None) or next(
                m.vision_config for m in models.values() if hasattr(m, "vision_config"))
            batch = task.batch(i, 1, cfg)
            logits, at = _logits(model, batch, cfg)
            entry[name] = shapes.WORDS[int(logits[0, at].argmax())]
        ex = task.example(i)
        entry.update(question=ex.question, truth=ex.answer)
        shapes.draw(ex, 32).resize((96, 96), Image.Resampling.NEAREST).save(out / entry["file"], optimize=True)
        examples.append(entry)
    return examples


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decoders", default="transformer,hybrid", help="comma-separated: transformer, hybrid")
    p.add_argument("--clip-steps", type=int, default=300, help="CLIP pre-training steps of the ViT (batch 64)")
    p.add_argument("--text-steps", type=int, default=150, help="text-only LM training steps (batch 64)")
    p.add_argument("--steps", type=int, default=500, help="training steps of each design (batch 64)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the designs' new parts")
    p.add_argument("--vit", default="frozen", choices=["frozen", "trained"],
                   help="the CLIP-pre-trained ViT: frozen (as Flamingo and LLaVA keep it) or trained on")
    p.add_argument("--tokens-lm", default="frozen", choices=["frozen", "trained"],
                   help="the tokens design's LM: frozen (as Flamingo's), or trained (LLaVA's second stage)")
    p.add_argument("--eval", type=int, default=512, help="held-out questions scored")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these tiny shapes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--examples", default=None, help="write a few held-out pictures with answers here (transformer)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from hybridlm.multimodal.shapes import CHANCE

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        progress("CLIP pre-training of the ViT")
        clip, clip_result = pretrain_clip(args.clip_steps, Path(work), args.threads, args.seed)
    clip_row = {"steps": clip_result.step, "train_s": round(clip_result.elapsed_s, 1),
                "final_loss": round(clip_result.train_loss, 4), "retrieval_top1_of_256": retrieval_accuracy(clip)}
    rows, examples = [], None
    for kind in args.decoders.split(","):
        kind_rows, models = run_decoder(kind.strip(), clip, args)
        rows += kind_rows
        if args.examples and examples is None:
            examples = write_examples(models, Path(args.examples), 4, args.seed)
    print(f"CLIP pre-training: {clip_row}")
    print_table(rows, ["decoder", "model", "trained", "steps", "train_s", "held_out_acc", "acc_color", "acc_shape",
                       "acc_count", "acc_side", "generate_acc"])
    print(f"chance (best a model without the picture can do): {CHANCE:.3f}")
    emit_json({"bench": "vision_proof", **environment(), "config": {**vars(args), "lm": LM, "patterns": PATTERNS,
               "vision": VISION}, "chance": CHANCE, "clip": clip_row, "results": rows, "examples": examples,
               "total_s": round(time.perf_counter() - start, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
