"""Prefill and decode speed of SmolLM2-135M: hybridlm (GGUF blocks run natively, and float32) against
llama.cpp on the same files, and transformers.

    python -m bench.decode [--model smollm2-135m] [--prompt-tokens 512] [--new-tokens 128] [--runs 3]
                           [--threads 2] [--engines LIST] [--work DIR]

Engines (--engines, comma-separated; default all):
  hybridlm:q4_1            the GGUF's own Q4_1 layers and Q8_0 head kept quantized, native kernels,
                           fast activations, each decode token one native call (kernels/decode_step.cpp),
                           K/V in float16 as llama.cpp keeps them: what `hybridlm generate` does by default
  hybridlm:q4_1:kv32       the same with float32 K/V (`--kv-cache float`)
  hybridlm:q4_1:eager      the same weights and kernels, decode steps through the PyTorch model
                           (`--decode-step eager`)
  hybridlm:q4_1:compiled   the same with the decode step compiled (`--compile`)
  hybridlm:q8_0            a Q8_0 file of the same model (below), kept quantized, native decode step
                           (float16 K/V; hybridlm:q8_0:kv32 with float32 K/V)
  hybridlm:f32             the Q4_1 file dequantized to float32 (`--dtype float32`), packed linears
  transformers             the Q4_1 file dequantized by transformers, float32
  llama.cpp:q4_1, llama.cpp:q8_0   llama-cpp-python on the same two files (skipped if not installed)

The Q8_0 file is made once into --work (default ~/.cache/hybridlm/bench): the Q4_1 model
dequantized, written as an F32 GGUF (checkpoints/gguf_write.py), then quantized by llama.cpp's own
`llama_model_quantize` (or, without llama-cpp-python, by our port of ggml's reference quantizer).

Every engine gets the same 512 real tokens (Python's bundled documentation), the same thread
count, and decodes 128 new tokens greedily past EOS. Prefill = time to the first new token;
decode = the 127 after it. Each engine runs in its own process (bench/decode_worker.py), loaded
once; the runs alternate between engines (run 1 of each, then run 2 of each...) so the machine's
noise hits all alike; medians are reported. Ratios are against llama.cpp on the same file where
it ran. same_greedy_tokens: leading tokens equal to that reference's. The bandwidth floor is the
matrix weights a decode step reads over this machine's measured read bandwidth (2 threads, a
1 GiB sum): floor_tok_s = read GB/s / weight GB, and of_floor = decode tok/s / floor_tok_s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .common import emit_json, environment, median, print_table, progress

ENGINES = ("hybridlm:q4_1", "hybridlm:q4_1:kv32", "hybridlm:q4_1:eager", "hybridlm:q4_1:compiled", "hybridlm:q8_0",
           "hybridlm:q8_0:kv32", "hybridlm:f32",
           "transformers", "llama.cpp:q4_1", "llama.cpp:q8_0")
WORKER = Path(__file__).with_name("decode_worker.py")


def real_text_ids(tokenizer, n_tokens: int) -> list[int]:
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    ids = tokenizer.encode(text)
    if len(ids) < n_tokens:
        raise SystemExit(f"pydoc_data gives only {len(ids)} tokens")
    return ids[:n_tokens]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return environment()["device"]


def memory_read_gb_s(threads: int, gib: int = 1) -> float:
    """What this machine reads from memory with `threads` threads: the best of 5 sums over a tensor
    far larger than the caches. The ceiling the decode rows are measured against."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.ones(gib * 2**28)
        x.sum()
        best = min(_timed(x.sum) for _ in range(5))
    finally:
        torch.set_num_threads(before)
    return x.numel() * x.element_size() / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def gguf_matrix_bytes(path: Path) -> int:
    """Bytes of a GGUF's matrices (what a decode step reads; a tied embedding is the LM head)."""
    from gguf import GGUFReader

    return sum(int(t.n_bytes) for t in GGUFReader(path).tensors if len(t.shape) > 1)


def make_q8_0(source: Path, work: Path, threads: int) -> tuple[Path, str]:
    """A Q8_0 GGUF of the model in `source` (made once into `work`); returns (path, who quantized)."""
    from hybridlm.checkpoints.gguf_write import gguf_metadata_fields, write_gguf
    from hybridlm.checkpoints.registry import load_model

    from .llama_peer import find_llama_python, run_peer

    python = find_llama_python()
    out = work / f"{source.stem}.Q8_0.{'llama' if python else 'hybridlm'}.gguf"
    if out.is_file():
        return out, "llama.cpp" if python else "hybridlm"
    work.mkdir(parents=True, exist_ok=True)
    loaded = load_model(source, dtype=torch.float32)
    fields = gguf_metadata_fields(source)
    if python is None:
        progress("llama-cpp-python not found: writing Q8_0 with hybridlm's port of ggml's reference quantizer")
        write_gguf(loaded.model, loaded.tokenizer, out, quant="q8_0", tokenizer_fields=fields)
        return out, "hybridlm"
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        f32 = Path(tmp) / "f32.gguf"
        progress(f"writing {f32.name} and quantizing it to Q8_0 with llama.cpp")
        write_gguf(loaded.model, loaded.tokenizer, f32, quant="f32", tokenizer_fields=fields)
        partial = Path(tmp) / out.name
        run_peer(python, "quantize", "--model", f32, "--out", partial, "--type", "q8_0", "--threads", threads)
        os.replace(partial, out)
    return out, "llama.cpp"


class Worker:
    """One engine's process (decode_worker.py): started, loaded, then asked for runs."""

    def __init__(self, name: str, python: str, args: list[str]):
        self.name = name
        self.proc = subprocess.Popen([python, str(WORKER), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker exited (code {self.proc.wait()}); see its stderr above")
        return json.loads(line)

    def run(self) -> dict:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def engine_spec(name: str, files: dict[str, Path], llama_python: str | None, common: list[str]):
    """(python, worker args, file) for an engine name, or None when it cannot run here."""
    parts = name.split(":")
    if parts[0] == "llama.cpp":
        if llama_python is None:
            return None
        return llama_python, ["--engine", "llama.cpp", "--model", str(files[parts[1]]), *common], files[parts[1]]
    if parts[0] == "transformers":
        return sys.executable, ["--engine", "transformers", "--model", str(files["q4_1"]), *common], files["q4_1"]
    kind = parts[1]
    file = files["q4_1" if kind == "f32" else kind]
    args = ["--engine", "hybridlm", "--model", str(file), *common]
    args += [] if kind == "f32" else ["--keep-quantized"]
    args += ["--compile"] if "compiled" in parts else []
    native = kind != "f32" and not {"eager", "compiled"} & set(parts)
    args += ["--native-step"] if native else []
    args += ["--kv-cache", "float16" if native and "kv32" not in parts else "float"]
    return sys.executable, args, file


def agreement(a: list[int] | None, b: list[int] | None) -> int | None:
    """Leading tokens on which two greedy continuations agree."""
    if a is None or b is None:
        return None
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="registry name or .gguf path (Q4_1 for the default rows)")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of: {', '.join(ENGINES)}")
    ap.add_argument("--work", default=None, help="where the Q8_0 file is made (default ~/.cache/hybridlm/bench)")
    args = ap.parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise SystemExit(f"unknown engines {unknown}; choose from {', '.join(ENGINES)}")

    from hybridlm.checkpoints.gguf import read_gguf_tokenizer
    from hybridlm.checkpoints.registry import resolve_gguf

    from .llama_peer import find_llama_python

    source = resolve_gguf(args.model)
    files, quantizer = {"q4_1": source}, None
    work = Path(args.work) if args.work else Path.home() / ".cache" / "hybridlm" / "bench"
    if any("q8_0" in e for e in engines):
        files["q8_0"], quantizer = make_q8_0(source, work, args.threads)
    llama_python = find_llama_python() if any(e.startswith("llama.cpp") for e in engines) else None
    if llama_python is None and any(e.startswith("llama.cpp") for e in engines):
        progress("llama-cpp-python is not installed (pip install llama-cpp-python, or set HYBRIDLM_LLAMA_PYTHON): "
                 "skipping the llama.cpp rows")
    prompt = real_text_ids(read_gguf_tokenizer(source), args.prompt_tokens)
    read_gb_s = memory_read_gb_s(args.threads)

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(prompt, f)
    common = ["--prompt-file", f.name, "--new-tokens", str(args.new_tokens), "--threads", str(args.threads)]
    workers: list[Worker] = []
    try:
        for name in engines:
            spec = engine_spec(name, files, llama_python, common)
            if spec is None:
                continue
            progress(f"loading {name}" + (" (compiling its decode step)" if "compiled" in name else ""))
            workers.append(Worker(name, spec[0], spec[1]))
            workers[-1].file = spec[2]
        runs: dict[str, list[dict]] = {w.name: [] for w in workers}
        for i in range(args.runs):  # alternate: every engine's run i before any run i + 1
            for w in workers:
                progress(f"run {i + 1}/{args.runs}: {w.name}")
                runs[w.name].append(w.run())
    finally:
        for w in workers:
            w.close()
        os.unlink(f.name)

    rows = []
    for w in workers:
        r = runs[w.name]
        decode = median([(args.new_tokens - 1) / x["decode_s"] for x in r])
        weight_bytes = w.info["weight_bytes"] or gguf_matrix_bytes(w.file)
        floor = read_gb_s * 1e9 / weight_bytes
        rows.append({"engine": w.name, "file": w.file.name, "load_s": w.info["load_s"],
                     "compile_s": w.info["compile_s"], "prefill_tok_s": median([len(prompt) / x["prefill_s"] for x in r]),
                     "decode_tok_s": decode, "weight_mb": weight_bytes / 1e6, "weight_gb_s": decode * weight_bytes / 1e9,
                     "floor_tok_s": floor, "of_floor": decode / floor, "tokens": r[-1]["tokens"]})
    llama_rows = [r for r in rows if r["engine"].startswith("llama.cpp")]
    for row in rows:  # against llama.cpp on the same file, else any llama.cpp row, else the first row
        same_file = [r for r in llama_rows if r["file"] == row["file"]]
        peer = (same_file or llama_rows or rows)[0]
        row["vs"] = peer["engine"]
        row["x_prefill"] = row["prefill_tok_s"] / peer["prefill_tok_s"]
        row["x_decode"] = row["decode_tok_s"] / peer["decode_tok_s"]
        row["same_greedy_tokens"] = agreement(peer["tokens"], row["tokens"])
    print_table(rows, ["engine", "load_s", "compile_s", "prefill_tok_s", "decode_tok_s", "vs", "x_prefill", "x_decode",
                       "same_greedy_tokens", "weight_mb", "floor_tok_s", "of_floor"])
    print(f"CPU: {cpu_model()}, {args.threads} threads; memory read bandwidth {read_gb_s:.1f} GB/s (sum over 1 GiB); "
          f"Q8_0 file quantized by {quantizer or '-'}")
    for row in rows:
        row.pop("tokens")
    emit_json({"bench": "decode", **environment(), "cpu_model": cpu_model(), "model": args.model,
               "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "runs": args.runs,
               "threads": args.threads, "engines": engines, "q8_0_quantizer": quantizer,
               "memory_read_gb_s": read_gb_s, "results": rows})


if __name__ == "__main__":
    main()
