"""Sentence embedding throughput: our BERT encoder vs sentence-transformers, same model, same run.

    python -m bench.embed [--sentences 512] [--batch 32] [--runs 3] [--threads N]

Sentences are paragraphs of Python's bundled documentation (pydoc_data), cut to lengths typical of
RAG chunks. Both sides embed the same list with the same batch size; each is warmed up once, then
timed `runs` times (median reported). The vectors are compared too (min cosine), so the speed is
for the same output. A short table, then one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from .common import emit_json, environment, median, print_table, progress


def corpus(n: int) -> list[str]:
    from pydoc_data.topics import topics

    paragraphs = [p.strip() for k in sorted(topics) for p in topics[k].split("\n\n") if len(p.strip()) > 30]
    return [paragraphs[i % len(paragraphs)][: 80 + (i * 37) % 700] for i in range(n)]


def _time(fn, runs: int) -> tuple[float, np.ndarray]:
    out = fn()  # warm-up (allocator, oneDNN primitives)
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - start)
    return median(seconds), out


def run(sentences: int, batch: int, runs: int) -> dict:
    from hybridlm.checkpoints.registry import resolve
    from hybridlm.rag.embed import load_sentence_encoder

    texts = corpus(sentences)
    progress(f"embedding {len(texts)} sentences, batch {batch}, {runs} timed runs each")
    ours = load_sentence_encoder("all-minilm-l6-v2")
    tokens = sum(len(t) for t in ours.tokenize(texts))
    ours_s, ours_v = _time(lambda: ours.embed(texts, batch_size=batch), runs)
    rows = [{"impl": "hybridlm", "seconds": ours_s, "sentences_per_s": len(texts) / ours_s,
             "tokens_per_s": tokens / ours_s}]
    result = {"sentences": len(texts), "tokens": tokens, "batch": batch, "runs": runs}
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        progress("sentence-transformers is not installed (pip install -e '.[test]'): no peer")
        peer = None
    else:
        peer = SentenceTransformer(str(resolve("all-minilm-l6-v2")[1]), device="cpu")
        peer_s, peer_v = _time(lambda: peer.encode(texts, batch_size=batch, convert_to_numpy=True), runs)
        rows.append({"impl": "sentence-transformers", "seconds": peer_s, "sentences_per_s": len(texts) / peer_s,
                     "tokens_per_s": tokens / peer_s})
        cosine = (ours_v * peer_v).sum(1) / np.linalg.norm(ours_v, axis=1) / np.linalg.norm(peer_v, axis=1)
        result.update(ratio=peer_s / ours_s, min_cosine=float(cosine.min()))
    for r in rows:
        r["ratio_vs_peer"] = rows[1]["seconds"] / r["seconds"] if peer is not None else None
    result["rows"] = rows
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sentences", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.sentences, args.batch, args.runs)
    print_table(result["rows"], ["impl", "seconds", "sentences_per_s", "tokens_per_s", "ratio_vs_peer"])
    emit_json({"bench": "embed", "model": "all-minilm-l6-v2", **result, "env": environment()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
