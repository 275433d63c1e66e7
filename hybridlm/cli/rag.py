"""`rag index`, `rag search` and `rag ask`: retrieval-augmented generation over a folder of documents."""

from __future__ import annotations

import json
import sys


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _index_encoder(index):
    """The sentence encoder an index was built with (its name is recorded in the index)."""
    from ..rag.embed import load_sentence_encoder

    if not index.embedder:
        raise ValueError(f"{index.path}: the index does not record its embedding model")
    return load_sentence_encoder(index.embedder)


def cmd_index(args) -> int:
    from ..rag.embed import load_sentence_encoder
    from ..rag.index import build_index

    encoder = load_sentence_encoder(args.embedder)
    stats = build_index(args.dir, args.out, encoder, max_chars=args.chunk_chars, overlap_chars=args.overlap_chars,
                        batch_size=args.batch, progress=not args.no_progress)
    for line in stats.skipped:
        _log(f"hybridlm: skipped {line}")
    summary = {"index": args.out, "files": stats.files, "indexed": stats.indexed, "unchanged": stats.unchanged,
               "removed": stats.removed, "skipped": len(stats.skipped), "chunks_added": stats.chunks_added,
               "chunks_total": stats.chunks_total, "seconds": round(stats.seconds, 3)}
    if args.json:
        print(json.dumps(summary))
    _log(f"indexed {stats.indexed} of {stats.files} files ({stats.unchanged} unchanged, {stats.removed} removed, "
         f"{len(stats.skipped)} skipped) into {args.out}: {stats.chunks_total} chunks, {stats.seconds:.1f} s")
    return 0


def _open(args):
    from ..rag.retrieve import Index

    index = Index(args.index)
    encoder = None if args.mode == "bm25" else _index_encoder(index)
    return index, encoder


def cmd_search(args) -> int:
    from ..rag.answer import source_label
    from ..rag.retrieve import retrieve

    index, encoder = _open(args)
    hits = retrieve(index, args.question, args.k, args.mode, encoder)
    if args.json:
        print(json.dumps({"question": args.question, "mode": args.mode, "hits": [h.as_dict() for h in hits]}))
        return 0
    for n, hit in enumerate(hits, start=1):
        first = hit.text.strip().splitlines()[0][:100] if hit.text.strip() else ""
        print(f"[{n}] {source_label(hit)}  score {hit.score:.4f}  {first}")
    return 0


def cmd_ask(args) -> int:
    from ..checkpoints.registry import load_model
    from ..generation.sampling import SamplingConfig
    from ..rag.answer import ask, source_label

    if args.max_new_tokens < 1:
        raise ValueError("--max-new-tokens must be at least 1")
    index, encoder = _open(args)
    if not len(index):  # before loading the generator: nothing to answer from
        raise ValueError(f"{args.index}: the index is empty (no chunks): index some documents first")
    loaded = load_model(args.model)
    tok = loaded.tokenizer
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              seed=args.seed, eos_token_ids=tuple(tok.eos_token_ids))
    answer = ask(args.question, index, encoder, loaded, args.k, args.mode, sampling)
    if args.json:
        print(json.dumps({"model": loaded.name, **answer.as_dict()}))
        return 0
    print(answer.text)
    print()
    print("Sources:")
    for n, hit in enumerate(answer.sources, start=1):
        mark = "*" if n in answer.cited else " "
        print(f"{mark}[{n}] {source_label(hit)}")
    _log(f"retrieved {len(answer.sources)} chunks ({args.mode}) in {answer.stats['retrieve_s']:.2f} s; "
         f"prompt {answer.stats['prompt_tokens']} tokens; decode {answer.stats['decode_tokens_per_s']:.1f} tok/s; "
         "* = cited")
    return 0


def register(sub) -> None:
    """Add `rag` (index, search, ask) to the `hybridlm` parser."""
    from ..rag.retrieve import MODES

    rag = sub.add_parser("rag", help="retrieval-augmented generation: index documents, search them, answer with citations",
                         description="Index a folder of documents (text, Markdown, reStructuredText, HTML, Python) "
                                     "into one SQLite file with a sentence encoder, search it (dense cosine, BM25 "
                                     "keywords, or their fusion) and answer questions from it with numbered citations.")
    cmds = rag.add_subparsers(dest="rag_command", required=True, metavar="COMMAND")

    p = cmds.add_parser("index", help="build or update an index of a folder (incremental: unchanged files are skipped)",
                        description="Split every document under DIR into overlapping chunks on paragraph boundaries, "
                                    "embed them in batches and store text, vector, file and line span in --out (SQLite). "
                                    "Run it again to update: unchanged files (by content hash) are skipped, changed "
                                    "ones replaced, deleted ones removed; each file is one transaction, so an "
                                    "interrupted run leaves a usable index. Unreadable or binary files are skipped "
                                    "and listed on stderr.")
    p.add_argument("dir", help="folder of documents (or one file)")
    p.add_argument("--out", required=True, help="the index file (created, or updated if it exists)")
    p.add_argument("--embedder", default="all-minilm-l6-v2",
                   help="sentence encoder: registry name or HF BERT directory (default all-minilm-l6-v2); an "
                        "existing index must be updated with the model that built it")
    p.add_argument("--batch", type=int, default=32, help="chunks per embedding forward (default 32)")
    p.add_argument("--chunk-chars", type=int, default=1000, help="longest chunk in characters (default 1000)")
    p.add_argument("--overlap-chars", type=int, default=200,
                   help="at most this many characters of whole paragraphs repeated from the previous chunk (default 200)")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_index)

    def retrieval_args(p, default_k):
        p.add_argument("index", help="an index made by `hybridlm rag index`")
        p.add_argument("question", help="the question or search text")
        p.add_argument("--k", type=int, default=default_k, help=f"chunks to retrieve (default {default_k})")
        p.add_argument("--mode", default="hybrid", choices=MODES,
                       help="dense (cosine), bm25 (keywords) or hybrid (reciprocal-rank fusion of both; default)")
        p.add_argument("--json", action="store_true", help="print one JSON object")

    p = cmds.add_parser("search", help="the chunks an index returns for a question (no generation)",
                        description="Retrieve the k best chunks for a question and print their file, line span and score.")
    retrieval_args(p, 5)
    p.set_defaults(func=cmd_search)

    p = cmds.add_parser("ask", help="answer a question from the indexed documents, citing numbered sources",
                        description="Retrieve k chunks, quote them to a chat model as numbered sources, and print "
                                    "its answer (which cites them as [n]) followed by the sources' files and line "
                                    "spans (* marks the cited ones).")
    retrieval_args(p, 4)
    p.add_argument("--model", default="smollm2-135m", help="the chat model that answers (default smollm2-135m)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="longest answer in tokens (default 200)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=None, help="fixes sampling when temperature > 0")
    p.set_defaults(func=cmd_ask)
