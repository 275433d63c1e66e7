"""PNG plots of a `CompareResult`: measurements as markers, the analysis model's predictions as
dashed lines of the same colour."""

from __future__ import annotations

from pathlib import Path


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.set_xscale("log", base=2)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_xlabel("context (tokens)")
    return plt, fig, ax


def _series(result, model: str, attr: str, scale: float = 1.0):
    points = sorted((p for p in result.points if p.model == model), key=lambda p: p.context)
    return [p.context for p in points], [getattr(p, attr) * scale for p in points]


def _plot(result, path: Path, measured: str, predicted, scale: float, ylabel: str, title: str,
          predicted_label: str, log_y: bool = False, measured_fmt: str = "o-") -> Path:
    """predicted(model) -> (contexts, values) of the dashed line."""
    plt, fig, ax = _figure()
    for i, model in enumerate(result.config.models):
        color = f"C{i}"
        ax.plot(*_series(result, model, measured, scale), measured_fmt, color=color, label=f"{model} (measured)")
        x, y = predicted(model)
        ax.plot(x, [v * scale for v in y], "--", color=color, alpha=0.7, label=f"{model} ({predicted_label})")
    if log_y:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_compare(result, out: Path) -> list[Path]:
    """decode_latency.png, cache_memory.png and prefill_time.png in `out`."""
    def points(attr):
        return lambda model: _series(result, model, attr)

    def cache_curve(model):
        return tuple(zip(*result.cache_curves[model]))

    return [
        _plot(result, out / "decode_latency.png", "decode_ms", points("decode_ms_floor"), 1.0, "ms per token",
              "Decode latency per token vs context", "roofline floor"),
        _plot(result, out / "cache_memory.png", "cache_bytes", cache_curve, 2.0**-20, "MiB",
              "Cache memory vs context", "predicted", log_y=True, measured_fmt="o"),
        _plot(result, out / "prefill_time.png", "prefill_s", points("prefill_floor_s"), 1.0, "seconds",
              "Prefill time vs context", "FLOPs / matmul rate", log_y=True),
    ]
