"""`embed`: one sentence embedding per input line, as sentence-transformers computes them."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _read_lines(file: str) -> list[str]:
    if file == "-":
        text = sys.stdin.read()
    else:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"{file}: no such file")
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            raise ValueError(f"{file}: looks binary (NUL bytes); embed reads UTF-8 text, one sentence per line")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = text.splitlines()
    if not lines:
        raise ValueError(f"{file}: no lines to embed")
    return lines


def cmd_embed(args) -> int:
    import numpy as np
    import torch

    from ..checkpoints.atomic import atomic_file
    from ..device import resolve_device
    from ..rag.embed import load_sentence_encoder

    if args.batch < 1:
        raise ValueError("--batch must be at least 1")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    if args.out is not None and not args.out.endswith(".npy"):
        raise ValueError(f"--out {args.out}: the output is a NumPy .npy file")
    lines = _read_lines(args.file)
    start = time.perf_counter()
    encoder = load_sentence_encoder(args.model, device=resolve_device(args.device))
    loaded = time.perf_counter()
    vectors = encoder.embed(lines, batch_size=args.batch, progress=not args.no_progress)
    seconds = time.perf_counter() - loaded
    if args.out is not None:
        with atomic_file(args.out, "wb") as f:
            np.save(f, vectors)
    else:
        for row in vectors:
            print(json.dumps([round(float(v), 7) for v in row]))
    where = f" -> {args.out}" if args.out else ""
    print(f"embedded {len(lines)} lines ({vectors.shape[1]} dims) in {seconds:.2f} s "
          f"({len(lines) / max(seconds, 1e-9):.1f} sentences/s; load {loaded - start:.2f} s){where}", file=sys.stderr)
    return 0


def register(sub) -> None:
    """Add `embed` to the `hybridlm` parser."""
    p = sub.add_parser(
        "embed", help="sentence embeddings of a text file, one per line (all-MiniLM-L6-v2 by default)",
        description="Embed every line of FILE with a sentence encoder (a BERT checkpoint such as the registry's "
                    "all-minilm-l6-v2): the same pooling, truncation and unit-length normalisation as "
                    "sentence-transformers. With --out, writes an (N, dim) float32 .npy (row i = line i); "
                    "otherwise prints one JSON array per line. Lines are batched by length; a progress bar "
                    "and the speed go to stderr.")
    p.add_argument("model", help="an encoder: a registry name (all-minilm-l6-v2) or an HF BERT directory")
    p.add_argument("file", help="UTF-8 text, one sentence per line (- reads stdin); empty lines are embedded too")
    p.add_argument("--out", default=None, help="write the vectors to this .npy file (atomically) instead of stdout")
    p.add_argument("--batch", type=int, default=32, help="sentences per forward (default 32)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_embed)
