"""The compression report: every way hybridlm can shrink a model, measured in one run on one machine.

Each variant starts from the same weights, is compressed by the library functions the commands
call (`quantize_model`, `prune_model`, the GGUF writer and loader), and is measured three ways:
the bytes its weights hold, its sliding-window perplexity on the held-out slice of the default
corpus (`eval/perplexity.py`, the one scorer the benchmarks share), and its greedy decode
speed at batch 1. The result is a Markdown table, a JSON file and a PNG of perplexity against
bytes with decode speed as colour.

"float32" is the starting point. For SmolLM2 that is its Q4_1 GGUF dequantized: the only weights
of it on this machine, and already on a 4-bit grid per 32 inputs, which flatters 4-bit methods at
group size 32 (RTN g32 asymmetric nearly reproduces the file); the report says so in its header.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..kernels import qmatmul
from ..nn.quant import QuantLinear, set_quant_modes

DEFAULT_VARIANTS = (
    "float32", "bfloat16", "gguf-q4_1", "gguf-q4_1-exact", "gguf-q8_0", "w8-rtn", "w4-rtn-g32", "w4-rtn-g64",
    "w4-gptq-g64", "w4-awq-g64", "nf4-g64", "w8a8-smoothquant", "fp8-e4m3", "sparse-2:4", "mlp-channels-25%",
    "drop-2-layers",
)


@dataclass
class ReportConfig:
    model: str = "smollm2-135m"  # a registry name, GGUF file or HF directory with a Llama-style decoder
    variants: tuple[str, ...] = DEFAULT_VARIANTS  # names from VARIANTS, in table order
    eval_tokens: int = 4096  # held-out tokens scored for perplexity
    window: int = 512  # perplexity window (tokens)
    stride: int = 256  # perplexity stride (tokens)
    calib_tokens: int = 16384  # calibration tokens for gptq, awq, smoothquant and activation-ranked pruning
    prompt_tokens: int = 128  # real prompt before the decode measurement
    decode_tokens: int = 64  # greedy tokens per decode measurement
    decode_runs: int = 3  # decode measurements per variant (the median is reported)

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown report variants {unknown}; known: {', '.join(VARIANTS)}")
        for name in ("eval_tokens", "window", "stride", "calib_tokens", "prompt_tokens", "decode_tokens", "decode_runs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.stride > self.window:
            raise ValueError(f"the stride ({self.stride}) cannot exceed the window ({self.window})")


@dataclass
class ReportRow:
    variant: str
    description: str
    weight_bytes: int  # bytes of every weight tensor the model holds (a shared tensor counted once)
    parameters: int  # weights as stored values (a quantized weight counts its elements)
    perplexity: float
    decode_tokens_per_s: float
    act: str  # "float", "exact" (quantized weights, float activations) or "fast" (int8 activations)
    build_seconds: float


@dataclass
class Context:
    """What the variants share: the source loaded once in float32, its tokenizer, calibration data
    and a scratch folder."""

    cfg: ReportConfig
    base: nn.Module  # never handed out: variants compress copies of it
    tokenizer: object
    scratch: Path
    _calib: object = None

    def float_model(self) -> nn.Module:
        """A fresh float32 copy of the source for a variant to compress in place."""
        return copy.deepcopy(self.base)

    def calibration(self):
        from .calibration import build_calibration

        if self._calib is None:
            self._calib = build_calibration(self.tokenizer, n_tokens=self.cfg.calib_tokens)
        return self._calib


# -- the variants: name -> (description, build(ctx) -> model) ----------------------------------------
def _float32(ctx: Context) -> nn.Module:
    return ctx.float_model()


def _bfloat16(ctx: Context) -> nn.Module:
    return ctx.float_model().to(torch.bfloat16)


def _gguf(act: str) -> Callable[[Context], nn.Module]:
    def build(ctx: Context) -> nn.Module:
        from ..checkpoints.registry import load_model

        model = load_model(ctx.cfg.model, keep_quantized=True).model.eval()
        if not set_quant_modes(model, act_mode=act):
            raise ValueError(f"{ctx.cfg.model} has no quantized layers to keep (not a quantized GGUF)")
        return model
    return build


def _gguf_q8_0(ctx: Context) -> nn.Module:
    """The float weights written as a Q8_0 GGUF by our exporter, then loaded as llama.cpp would run it."""
    from ..checkpoints.gguf_write import write_gguf
    from ..checkpoints.registry import load_model

    path = ctx.scratch / "q8_0.gguf"
    if not path.exists():
        write_gguf(ctx.float_model(), ctx.tokenizer, path, quant="q8_0")
    model = load_model(path, keep_quantized=True).model.eval()
    set_quant_modes(model, act_mode="fast")
    return model


def _quantized(method: str, bits: int, group, **options) -> Callable[[Context], nn.Module]:
    def build(ctx: Context) -> nn.Module:
        from .api import quantize_model
        from .config import QuantizeConfig
        from .registry import get_method

        model = ctx.float_model()
        cfg = QuantizeConfig(method=method, bits=bits, group_size=group, **options)
        calib = ctx.calibration() if get_method(method).calibration == "required" else None
        quantize_model(model, cfg, calib)
        set_quant_modes(model, act_mode="fast")  # as `generate` runs a quantized directory by default
        return model
    return build


def _pruned(method: str, amount: float | None) -> Callable[[Context], nn.Module]:
    def build(ctx: Context) -> nn.Module:
        from .prune.api import prune_model
        from .prune.config import PruneConfig, resolve_prune_config

        cfg = resolve_prune_config(PruneConfig(method=method, amount=amount))
        calib = ctx.calibration() if cfg.needs_calibration else None
        model, _ = prune_model(ctx.float_model(), cfg, calib)
        return model.eval()
    return build


def _drop_two_layers(ctx: Context) -> nn.Module:
    return _pruned("layers", 2 / ctx.base.config.n_layers)(ctx)


VARIANTS: dict[str, tuple[str, Callable[[Context], nn.Module]]] = {
    "float32": ("float32 (the GGUF dequantized)", _float32),
    "bfloat16": ("bfloat16 weights and activations", _bfloat16),
    "gguf-q4_1": ("the GGUF's own Q4_1 (+ Q8_0 head), native kernels", _gguf("fast")),
    "gguf-q4_1-exact": ("the GGUF's own Q4_1, float activations", _gguf("exact")),
    "gguf-q8_0": ("Q8_0 GGUF written by `convert --quant q8_0`", _gguf_q8_0),
    "w8-rtn": ("int8 RTN, per channel", _quantized("rtn", 8, "channel")),
    "w4-rtn-g32": ("int4 RTN asymmetric, group 32", _quantized("rtn", 4, 32)),
    # group 64, not 128: SmolLM2's 576-wide inputs split into 64s but not 128s
    "w4-rtn-g64": ("int4 RTN asymmetric, group 64", _quantized("rtn", 4, 64)),
    "w4-gptq-g64": ("int4 GPTQ asymmetric, group 64", _quantized("gptq", 4, 64)),
    "w4-awq-g64": ("int4 AWQ asymmetric, group 64", _quantized("awq", 4, 64)),
    "nf4-g64": ("NF4, group 64", _quantized("nf4", 4, 64)),
    "w8a8-smoothquant": ("SmoothQuant W8A8, dynamic per-token activations", _quantized("smoothquant", 8, "channel")),
    "fp8-e4m3": ("FP8 e4m3 per channel (emulated)", _quantized("fp8", 8, "channel")),
    "sparse-2:4": ("2:4 sparsity by magnitude (dense storage)", _pruned("2:4", None)),
    "mlp-channels-25%": ("25% of MLP channels removed (activation importance)", _pruned("channels", 0.25)),
    "drop-2-layers": ("2 layers removed (least change to the hidden state)", _drop_two_layers),
}


# -- measuring ---------------------------------------------------------------------------------------
def weight_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes, stored values) of every persistent parameter and buffer, a shared tensor once.

    Quantized layers count their codes, scales, offsets and tables as stored; run-time copies a
    fast path derives (packed tiles, non-persistent buffers) are not weights and are left out."""
    seen: set[int] = set()
    total = values = 0
    tensors = list(model.state_dict(keep_vars=True).items())
    for name, t in tensors:
        if t is None or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
        values += t.numel() * (2 if name.endswith(".codes") and t.dtype == torch.uint8 and _is_4bit(model, name) else 1)
    return total, values


def _is_4bit(model: nn.Module, name: str) -> bool:
    module = model.get_submodule(name.rsplit(".", 1)[0])
    return isinstance(module, QuantLinear) and module.weight_q.bits == 4


def _act(model: nn.Module) -> str:
    modes = {getattr(m, "act_mode", None) for m in model.modules() if isinstance(m, QuantLinear)}
    if any(type(m).__name__ == "W8A8Linear" for m in model.modules()):
        return "int8"
    return "float" if not modes else "/".join(sorted(modes))


def decode_speed(model: nn.Module, prompt: list[int], n_tokens: int, runs: int) -> float:
    """Median greedy decode tokens/s at batch 1 after `prompt` (one warm-up run first)."""
    from ..generation import SamplingConfig, generate

    sampling = SamplingConfig(max_new_tokens=n_tokens, temperature=0, ignore_eos=True)
    generate(model, [prompt], sampling.replace(max_new_tokens=4), cache_kind="static")
    speeds = [generate(model, [prompt], sampling, cache_kind="static").stats.decode_tokens_per_s for _ in range(runs)]
    return statistics.median(speeds)


def _prepare(model: nn.Module) -> nn.Module:
    """Inference as the CLI runs it: float32 linears packed where measured faster."""
    from ..nn.packed_linear import pack_linears

    model.eval().requires_grad_(False)
    if next(model.parameters()).dtype == torch.float32:
        pack_linears(model, "auto")
    return model


def run_report(cfg: ReportConfig, progress: Callable[[str], None] = lambda _: None) -> list[ReportRow]:
    """Build, measure and discard each variant in turn; returns one row per variant."""
    from ..checkpoints.registry import load_model
    from ..eval.perplexity import perplexity
    from .calibration import heldout_text

    from ..checkpoints.registry import resolve

    own = [v for v in cfg.variants if v.startswith("gguf-q4_1")]
    if own and resolve(cfg.model)[2] != "gguf":
        raise ValueError(f"{', '.join(own)} run a GGUF's own quantized blocks; {cfg.model} is not a GGUF file")
    loaded = load_model(cfg.model, dtype=torch.float32)
    tokenizer = loaded.tokenizer
    text = heldout_text()
    ids = tokenizer.encode(text)[: cfg.eval_tokens]
    n_bytes = len(tokenizer.decode(ids, skip_special_tokens=True).encode("utf-8"))
    prompt = ids[: cfg.prompt_tokens]
    rows = []
    with tempfile.TemporaryDirectory(prefix="hybridlm-report-") as scratch:
        ctx = Context(cfg, loaded.model.eval(), tokenizer, Path(scratch))
        for name in cfg.variants:
            description, build = VARIANTS[name]
            progress(f"{name}: building")
            start = time.perf_counter()
            model = build(ctx)
            built = time.perf_counter() - start
            nbytes, values = weight_bytes(model)  # as stored: before packing adds run-time copies
            model = _prepare(model)
            progress(f"{name}: perplexity on {len(ids)} held-out tokens")
            # prefill-sized inputs would take the float tile GEMM even in fast mode; scored through
            # the row kernels, a fast-mode perplexity is that of its int8 activations
            with torch.inference_mode(), qmatmul.row_kernels_only():
                ppl = perplexity(model, ids, cfg.window, cfg.stride, n_bytes=n_bytes)
            progress(f"{name}: decoding")
            speed = decode_speed(model, prompt, cfg.decode_tokens, cfg.decode_runs)
            rows.append(ReportRow(name, description, nbytes, values, ppl.perplexity, speed, _act(model), built))
            progress(f"{name}: {nbytes / 2**20:.1f} MiB, perplexity {ppl.perplexity:.3f}, {speed:.1f} tok/s")
            del model
    return rows


# -- writing -----------------------------------------------------------------------------------------
def markdown_table(rows: list[ReportRow]) -> str:
    base = next((r for r in rows if r.variant == "float32"), rows[0])
    lines = ["| variant | what | weight MiB | x float32 bytes | perplexity | x float32 ppl | decode tok/s | activations |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.variant} | {r.description} | {r.weight_bytes / 2**20:.1f} | "
                     f"{r.weight_bytes / base.weight_bytes:.3f} | {r.perplexity:.3f} | "
                     f"{r.perplexity / base.perplexity:.4f} | {r.decode_tokens_per_s:.1f} | {r.act} |")
    return "\n".join(lines)


def plot(rows: list[ReportRow], path: Path) -> None:
    """Perplexity against weight bytes, decode tokens/s as colour, one labelled point per variant."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    mib = [r.weight_bytes / 2**20 for r in rows]
    points = ax.scatter(mib, [r.perplexity for r in rows], c=[r.decode_tokens_per_s for r in rows],
                        cmap="viridis", s=60)
    for r, x in zip(rows, mib):
        ax.annotate(r.variant, (x, r.perplexity), textcoords="offset points", xytext=(4, 4), fontsize=7)
    fig.colorbar(points, label="decode tokens/s (batch 1)")
    ax.set_xscale("log")
    ax.set_xlabel("weight bytes (MiB, log scale)")
    ax.set_ylabel("perplexity on held-out text")
    ax.set_title("Compression: quality vs size vs speed")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(rows: list[ReportRow], cfg: ReportConfig, out: Path, header: dict, overwrite: bool = False) -> Path:
    """report.md, report.json and report.png in `out`, written atomically."""
    import json

    from ..checkpoints.atomic import atomic_dir

    with atomic_dir(out, overwrite=overwrite) as tmp:
        intro = "\n".join(f"- {k}: {v}" for k, v in header.items())
        (tmp / "report.md").write_text(f"# Compression report: {cfg.model}\n\n{intro}\n\n{markdown_table(rows)}\n")
        (tmp / "report.json").write_text(json.dumps({"config": asdict(cfg), "header": header,
                                                      "rows": [asdict(r) for r in rows]}, indent=1) + "\n")
        plot(rows, tmp / "report.png")
    return out
