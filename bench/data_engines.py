"""Data preparation speed and memory: `--engine local` against `--engine ray` (1 and 2 workers) on a
synthetic corpus generated on the fly (random prose over a 2,000-word vocabulary, 5% exact and 5%
near duplicates), with the output of every engine checked equal to the local one.

    python -m bench.data_engines --mb 20

Each run is a fresh subprocess: wall time, documents/s and the peak resident memory of the whole
process tree (driver + Ray's raylet and workers, sampled every 50 ms with psutil).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from .common import emit_json, environment, print_table, progress

RUN = """
import json, sys, time
from hybridlm.data.prepare import PrepareConfig, prepare
from hybridlm.data.ray_engine import RayOptions
corpus, out, engine, workers, tokenizer = sys.argv[1:6]
config = PrepareConfig(inputs=(f"web={corpus}",), tokenizer=tokenizer, show_progress=False)
ray = RayOptions(workers=int(workers), partition_docs=2000) if engine == "ray" else None
start = time.perf_counter()
manifest = prepare(out, config, ray=ray)
print(json.dumps({"seconds": time.perf_counter() - start, "hash": manifest["content_hash"],
                  "docs_in": manifest["stages"][0]["in"]}))
"""


def write_corpus(path: Path, megabytes: float, seed: int = 0) -> int:
    """JSONL of random prose documents (~2 KB each) until `megabytes`; returns the document count."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, size=rng.integers(3, 10))) for _ in range(2000)]
    target, written, docs, recent = megabytes * 2**20, 0, 0, []
    with path.open("w") as f:
        while written < target:
            roll = rng.random()
            if recent and roll < 0.05:
                text = recent[rng.integers(len(recent))].upper()  # exact duplicate after normalization
            elif recent and roll < 0.10:
                words = recent[rng.integers(len(recent))].split()
                words[rng.integers(len(words))] = "changed"
                text = " ".join(words)  # near duplicate
            else:
                words = [vocab[i] for i in rng.integers(0, len(vocab), size=300)]
                text = ". ".join(" ".join(words[i:i + 12]).capitalize() for i in range(0, 300, 12)) + "."
                recent = (recent + [text])[-200:]
            line = json.dumps({"text": text}) + "\n"
            f.write(line)
            written += len(line)
            docs += 1
    return docs


def _peak_tree_rss(proc: subprocess.Popen, box: dict) -> None:
    """Sample the resident memory of proc and its descendants until it exits."""
    try:
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            total = 0
            for p in [root, *root.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            box["peak"] = max(box.get("peak", 0), total)
            time.sleep(0.05)
    except psutil.Error:
        pass


def run_engine(corpus: Path, out: Path, engine: str, workers: int, tokenizer: str) -> dict:
    proc = subprocess.Popen([sys.executable, "-c", RUN, str(corpus), str(out), engine, str(workers), tokenizer],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    box: dict = {}
    sampler = threading.Thread(target=_peak_tree_rss, args=(proc, box), daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} run failed: {stderr[-2000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    return {**result, "peak_rss_mib": box.get("peak", 0) / 2**20}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=20.0, help="corpus size in MiB (default 20)")
    ap.add_argument("--tokenizer", default="smollm2-135m", help="tokenizer of the shards (default smollm2-135m)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        docs = write_corpus(corpus, args.mb)
        progress(f"corpus: {docs:,} documents, {corpus.stat().st_size / 2**20:.1f} MiB")
        rows = []
        for engine, workers in [("local", 1), ("ray", 1), ("ray", 2)]:
            progress(f"running {engine} ({workers} worker{'s' if workers > 1 else ''})")
            r = run_engine(corpus, Path(tmp) / f"out-{engine}-{workers}", engine, workers, args.tokenizer)
            rows.append({"engine": engine, "workers": workers, "seconds": r["seconds"],
                         "docs_per_s": r["docs_in"] / r["seconds"], "peak_rss_mib": r["peak_rss_mib"],
                         "same_as_local": r["hash"] == (rows[0]["hash"] if rows else r["hash"]), "hash": r["hash"]})
    print_table(rows, ["engine", "workers", "seconds", "docs_per_s", "peak_rss_mib", "same_as_local"])
    emit_json({"bench": "data_engines", "corpus_mib": args.mb, "documents": docs, "rows": rows, **environment()})


if __name__ == "__main__":
    main()
