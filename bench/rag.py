"""Retrieval quality and index build time on a corpus whose answers are known: Python's stdlib docstrings.

    python -m bench.rag [--modules json,textwrap,...] [--k 5] [--out-dir DIR]

The corpus is one Markdown file per standard-library module: a section per public function or
class, its signature as a heading and its docstring below. Two questions per docstring:
  - "describe": the docstring's first sentence, the thing's name removed ("Which function ...?"),
    as a user who knows what they want but not what it is called;
  - "identifier": "What does `module.name` do?", which only the heading answers: the case dense
    retrieval is known to miss.
The answer passage is the section's heading and first paragraph; a retrieved chunk is a hit when
its line span overlaps it. recall@1 and recall@k for dense, BM25 and hybrid (reciprocal-rank
fusion), and the index build time. A short table, then one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .common import emit_json, environment, print_table, progress

DEFAULT_MODULES = ("json", "textwrap", "shutil", "string", "heapq", "bisect", "statistics", "fractions", "functools",
                   "base64", "difflib", "fnmatch", "glob", "calendar", "csv", "gzip", "zipfile", "tempfile",
                   "pprint", "random", "html", "copy", "ipaddress", "uuid", "secrets")


@dataclass
class Question:
    text: str
    kind: str  # "describe" or "identifier"
    path: str  # the file holding the answer
    lines: tuple[int, int]  # the answer passage: heading .. end of the docstring's first paragraph


def _first_sentence(doc: str) -> str:
    para = " ".join(doc.strip().split("\n\n")[0].split())
    match = re.match(r"(.+?[.!?])(\s|$)", para)
    return (match.group(1) if match else para).strip()


def _entries(module_name: str) -> list[tuple[str, str, str]]:
    """(qualified name, signature heading, docstring) of the module's own public functions and classes."""
    module = importlib.import_module(module_name)
    out = []
    for name in sorted(getattr(module, "__all__", None) or dir(module)):
        obj = getattr(module, name, None)
        if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if getattr(obj, "__module__", None) != module_name or not (obj.__doc__ or "").strip():
            continue
        try:
            signature = str(inspect.signature(obj))
        except (TypeError, ValueError):
            signature = "(...)"
        out.append((f"{module_name}.{name}", f"{module_name}.{name}{signature}", inspect.cleandoc(obj.__doc__)))
    return out


def make_corpus(root: Path, modules: tuple[str, ...]) -> list[Question]:
    """Write the corpus under root; return its questions."""
    questions, seen = [], set()
    for module_name in modules:
        lines = [f"# {module_name}", ""]
        for qualified, heading, doc in _entries(module_name):
            sentence = _first_sentence(doc)
            start = len(lines) + 1
            lines += [f"## {heading}", ""]
            doc_lines = doc.splitlines()
            first_para = next((i for i, line in enumerate(doc_lines) if not line.strip()), len(doc_lines))
            lines += doc_lines + [""]
            end = start + 1 + first_para
            short = qualified.rsplit(".", 1)[1]
            described = re.sub(rf"\b{re.escape(short)}\b", "it", sentence)
            if len(sentence) >= 25 and sentence not in seen:  # a docstring first line shared by two entries is ambiguous
                seen.add(sentence)
                questions.append(Question(f"Which function or class: {described}", "describe",
                                          f"{module_name}.md", (start, end)))
            questions.append(Question(f"What does {qualified} do?", "identifier", f"{module_name}.md", (start, end)))
        (root / f"{module_name}.md").write_text("\n".join(lines) + "\n")
    return questions


def _hit(hit, question: Question) -> bool:
    return hit.path == question.path and hit.start_line <= question.lines[1] and hit.end_line >= question.lines[0]


def evaluate(index, encoder, questions: list[Question], k: int) -> list[dict]:
    from hybridlm.rag.retrieve import fuse

    vectors = encoder.embed([q.text for q in questions], batch_size=64)  # one batched pass for all queries
    rows = []
    found = {m: {"describe": [], "identifier": []} for m in ("dense", "bm25", "hybrid")}
    fetch = max(4 * k, 50)
    for q, v in zip(questions, vectors):
        dense, bm25 = index.dense(v, fetch), index.bm25(q.text, fetch)
        for mode, ranked in (("dense", dense[:k]), ("bm25", bm25[:k]), ("hybrid", fuse([dense, bm25], k))):
            hits = index._hits(ranked)
            first = next((i for i, h in enumerate(hits) if _hit(h, q)), None)
            found[mode][q.kind].append(first)
    for mode, kinds in found.items():
        for kind in ("describe", "identifier", "all"):
            ranks = kinds["describe"] + kinds["identifier"] if kind == "all" else kinds[kind]
            rows.append({"mode": mode, "questions": kind, "n": len(ranks),
                         "recall@1": sum(r == 0 for r in ranks) / max(len(ranks), 1),
                         f"recall@{k}": sum(r is not None for r in ranks) / max(len(ranks), 1)})
    return rows


def run(modules: tuple[str, ...], k: int, work: Path) -> dict:
    from hybridlm.rag.embed import load_sentence_encoder
    from hybridlm.rag.index import build_index
    from hybridlm.rag.retrieve import Index

    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    questions = make_corpus(corpus, modules)
    progress(f"corpus: {len(modules)} modules, {len(questions)} questions; embedding with all-minilm-l6-v2")
    encoder = load_sentence_encoder("all-minilm-l6-v2")
    start = time.perf_counter()
    stats = build_index(corpus, work / "index.sqlite", encoder, progress=True)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    rebuild = build_index(corpus, work / "index.sqlite", encoder)
    noop_s = time.perf_counter() - start
    index = Index(work / "index.sqlite")
    progress(f"index: {stats.chunks_total} chunks in {build_s:.1f} s; evaluating")
    rows = evaluate(index, encoder, questions, k)
    return {"modules": list(modules), "questions": len(questions), "chunks": stats.chunks_total, "k": k,
            "index_build_s": build_s, "chunks_per_s": stats.chunks_total / build_s,
            "reindex_unchanged_s": noop_s, "reindex_unchanged_files": rebuild.unchanged, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--modules", default=",".join(DEFAULT_MODULES), help="comma-separated stdlib modules")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--out-dir", default=None, help="keep the corpus and index here (default: a temporary folder)")
    args = p.parse_args(argv)
    modules = tuple(m for m in args.modules.split(",") if m)
    if args.out_dir:
        result = run(modules, args.k, Path(args.out_dir))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(modules, args.k, Path(tmp))
    print_table(result["rows"], ["mode", "questions", "n", "recall@1", f"recall@{args.k}"])
    print(f"index build: {result['chunks']} chunks in {result['index_build_s']:.1f} s; unchanged re-index "
          f"{result['reindex_unchanged_s']:.2f} s")
    emit_json({"bench": "rag", **result, "env": environment()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
