"""Data preparation speed and memory: `--engine local` against `--engine ray` (1 and 2 workers) on a
synthetic corpus generated on the fly (random prose over a 2,000-word vocabulary, 5% exact and 5%
near duplicates, deterministic from the seed), at one or more sizes, with the output of every engine
checked equal to the local one.

    python -m bench.data_engines --mb 32 128            # two sizes 4x apart: is the peak memory flat?
    python -m bench.data_engines --mb 8 --in-memory     # also the in-memory reference (grows with the corpus)
    python -m bench.data_engines --mb 2048 --corpus-dir /var/tmp/corpora   # a few GB, the corpus kept for the next run

Each run is a fresh subprocess: wall time, documents/s and the peak memory of the whole process
tree (driver + Ray's raylet, GCS and workers, summed over the processes with psutil): resident sets
(RSS, every 50 ms; shared pages such as Ray's object store count once per process mapping them,
an upper bound) and proportional sets (PSS, every 0.5 s; shared pages split, the real footprint).
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
corpus, out, engine, workers, tokenizer, store_mb = sys.argv[1:7]
config = PrepareConfig(inputs=(f"web={corpus}",), tokenizer=tokenizer, show_progress=False)
ray = RayOptions(workers=int(workers), partition_docs=2000, object_store_mb=int(store_mb) or None) \
    if engine == "ray" else None
start = time.perf_counter()
manifest = prepare(out, config, ray=ray, in_memory=engine == "memory")
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


def corpus_file(folder: Path, megabytes: float) -> tuple[Path, int]:
    """The synthetic corpus of `megabytes` in `folder` and its document count: generated unless a
    complete one is there (its count file is written last, so a half-written corpus is made again)."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus, count = folder / f"corpus-{megabytes:g}mib.jsonl", folder / f"corpus-{megabytes:g}mib.count"
    if not count.exists():
        start = time.perf_counter()
        docs = write_corpus(corpus, megabytes)
        count.write_text(str(docs))
        progress(f"corpus: {docs:,} documents, {corpus.stat().st_size / 2**20:.1f} MiB "
                 f"(generated in {time.perf_counter() - start:.0f} s)")
    return corpus, int(count.read_text())


def _peak_tree_rss(proc: subprocess.Popen, box: dict) -> None:
    """Sample the memory of proc and its descendants until it exits: the sum of their resident sets
    (shared pages, Ray's object store among them, counted once per process that maps them) and of
    their proportional sets (PSS: a shared page split between its users, so the sum is the tree's
    real footprint; read from /proc/PID/smaps_rollup, every 0.5 s as it is slower)."""
    try:
        root, tick = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            rss = pss = 0
            for p in [root, *root.children(recursive=True)]:
                try:
                    rss += p.memory_info().rss
                    if tick % 10 == 0:
                        pss += p.memory_full_info().pss
                except psutil.Error:
                    pass
            box["peak"] = max(box.get("peak", 0), rss)
            if tick % 10 == 0:
                box["peak_pss"] = max(box.get("peak_pss", 0), pss)
            tick += 1
            time.sleep(0.05)
    except psutil.Error:
        pass


def run_engine(corpus: Path, out: Path, engine: str, workers: int, tokenizer: str, store_mb: int) -> dict:
    proc = subprocess.Popen([sys.executable, "-c", RUN, str(corpus), str(out), engine, str(workers), tokenizer,
                             str(store_mb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    box: dict = {}
    sampler = threading.Thread(target=_peak_tree_rss, args=(proc, box), daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} run failed: {stderr[-2000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    return {**result, "peak_rss_mib": box.get("peak", 0) / 2**20, "peak_pss_mib": box.get("peak_pss", 0) / 2**20}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return "unknown"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, nargs="+", default=[20.0], help="corpus sizes in MiB (default 20)")
    ap.add_argument("--tokenizer", default="smollm2-135m", help="tokenizer of the shards (default smollm2-135m)")
    ap.add_argument("--engines", default="local,ray1,ray2", help="comma-separated: local, ray1, ray2 (default all)")
    ap.add_argument("--in-memory", action="store_true", help="also run the in-memory reference (prepare in_memory=True)")
    ap.add_argument("--object-store-mb", type=int, default=512, help="object store of the local Ray (default 512)")
    ap.add_argument("--workdir", default=None, help="where the corpus and outputs go (default a temporary directory)")
    ap.add_argument("--corpus-dir", default=None,
                    help="keep the generated corpora here and reuse them in later runs (named by size; default: "
                         "generated in the work directory and deleted)")
    args = ap.parse_args(argv)
    engines = [(e, 1) if e != "ray2" else ("ray", 2) for e in args.engines.split(",")]
    engines = [("ray", 1) if e == "ray1" else (e, w) for e, w in engines] + ([("memory", 1)] if args.in_memory else [])
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for mb in args.mb:
            corpus, docs = corpus_file(Path(args.corpus_dir or tmp), mb)
            first_hash = None
            for engine, workers in engines:
                progress(f"{mb:g} MiB: running {engine} ({workers} worker{'s' if workers > 1 else ''})")
                out = Path(tmp) / f"out-{mb:g}-{engine}-{workers}"
                r = run_engine(corpus, out, engine, workers, args.tokenizer, args.object_store_mb)
                first_hash = first_hash or r["hash"]
                rows.append({"mib": mb, "documents": docs, "engine": engine, "workers": workers,
                             "seconds": r["seconds"], "docs_per_s": r["docs_in"] / r["seconds"],
                             "peak_rss_mib": r["peak_rss_mib"], "peak_pss_mib": r["peak_pss_mib"],
                             "same_as_first": r["hash"] == first_hash,
                             "hash": r["hash"]})
                progress(f"  {rows[-1]['seconds']:.0f} s, {rows[-1]['docs_per_s']:.0f} docs/s, "
                         f"peak {rows[-1]['peak_rss_mib']:.0f} MiB RSS, {rows[-1]['peak_pss_mib']:.0f} MiB PSS")
                subprocess.run(["rm", "-rf", str(out)])
            if args.corpus_dir is None:
                corpus.unlink()
    print_table(rows, ["mib", "documents", "engine", "workers", "seconds", "docs_per_s", "peak_rss_mib", "peak_pss_mib",
                       "same_as_first"])
    emit_json({"bench": "data_engines", "cpu_model": cpu_model(), "rows": rows, **environment()})


if __name__ == "__main__":
    main()
