"""`data prepare` and `tokenizer train`: from raw text to training shards and tokenizers."""

from __future__ import annotations

import argparse

PREPARE_EPILOG = """\
stages (each prints what it kept and removed; the counts are also in manifest.json):
  extract        text out of files: encodings detected, HTML boilerplate (scripts, styles, nav,
                 header, footer, aside, forms) stripped
  filters        length, symbol and letter ratios, repeated lines and n-grams (--filter to tune)
  exact_dedup    identical after Unicode, case and whitespace normalization
  near_dedup     MinHash + LSH over word 5-gram shingles (--jaccard, --num-perm)
  decontaminate  shares a word 13-gram with an evaluation file (--decontaminate, --ngram)
  split          whole documents to train / validation, per source (--val-fraction)
  mix            per-source shares of the output by sampling or repetition (--mix)
  tokenize       uint16 (or uint32) shards, memory-mapped by the trainer

output: DIR/manifest.json (sources, weights, stage counts, tokenizer, content hash), train_*.bin,
val_*.bin, documents.jsonl (the curated text) and tokenizer/.

memory: the corpus streams through partitions of 2,000 records; the texts wait in a spill file
beside DIR (.hybridlm-spill-*, removed at the end: it needs about the corpus's size on that disk)
and only small records per document stay in memory (about 0.4 KB measured locally: a 2 GiB corpus of
a million documents prepared in 650 MiB), so corpora larger than RAM prepare.

examples:
  hybridlm data prepare --default --out data/pydoc
  hybridlm data prepare prose=notes/ code=src/ --ext .md,.py --mix prose=0.7,code=0.3 --out data/mine
  hybridlm data prepare crawl.jsonl --text-field content --decontaminate eval/test.jsonl --out data/web
  hybridlm data prepare --default --engine ray --ray-workers 2 --out data/pydoc-ray
"""

TOKENIZER_EPILOG = """\
examples:
  hybridlm tokenizer train data/pydoc --vocab-size 8192 --out tok.json
  hybridlm data prepare --default --tokenizer tok.json --out data/pydoc-8k
"""


def _int_or_none(value: str | None, flag: str) -> int | None:
    from ..data.documents import DataError

    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{flag} needs a whole number, got {value!r}") from None


def _float(value: str, flag: str) -> float:
    from ..data.documents import DataError

    try:
        return float(value)
    except ValueError:
        raise DataError(f"{flag} needs a number, got {value!r}") from None


def _extensions(text: str) -> tuple[str, ...]:
    return tuple("." + e.strip().lower().lstrip(".") for e in text.split(",") if e.strip())


def cmd_prepare(args) -> int:
    from ..data.decontam import DecontamConfig
    from ..data.filters import FilterConfig
    from ..data.minhash import MinHashConfig
    from ..data.mix import MixConfig
    from ..data.prepare import PrepareConfig, prepare

    seed = _int_or_none(args.seed, "--seed")
    config = PrepareConfig(
        inputs=tuple(args.inputs), default_corpus=args.default, tokenizer=args.tokenizer, text_field=args.text_field,
        extensions=_extensions(args.ext), max_docs=_int_or_none(args.max_docs, "--max-docs"),
        filters=None if args.filter == "off" else FilterConfig.from_overrides(args.filter or ""),
        exact_dedup=not args.no_dedup,
        near_dedup=None if args.no_dedup else MinHashConfig(
            threshold=_float(args.jaccard, "--jaccard"), num_perm=_int_or_none(args.num_perm, "--num-perm"),
            seed=seed),
        decontam=DecontamConfig(files=tuple(args.decontaminate), n=_int_or_none(args.ngram, "--ngram")),
        mix=MixConfig.parse(args.mix, total=args.mix_total, seed=seed),
        val_fraction=_float(args.val_fraction, "--val-fraction"), seed=seed, show_progress=not args.quiet)
    ray = None
    if args.engine == "ray":
        from ..data.ray_engine import RayOptions

        ray = RayOptions(address=args.ray_address, workers=_int_or_none(args.ray_workers, "--ray-workers"),
                         partition_docs=_int_or_none(args.partition_docs, "--partition-docs"),
                         object_store_mb=_int_or_none(args.object_store_mb, "--object-store-mb"))
    elif args.ray_address or args.ray_workers or args.object_store_mb:
        from ..data.documents import DataError

        raise DataError("--ray-address, --ray-workers and --object-store-mb need --engine ray")
    prepare(args.out, config, overwrite=args.overwrite, ray=ray)
    return 0


def cmd_tokenizer_train(args) -> int:
    from ..data.tokenizer_training import train_tokenizer, training_texts

    vocab_size = _int_or_none(args.vocab_size, "--vocab-size")
    min_frequency = _int_or_none(args.min_frequency, "--min-frequency")
    texts = training_texts(args.inputs, default_corpus=args.default, text_field=args.text_field,
                           max_docs=_int_or_none(args.max_docs, "--max-docs"))
    train_tokenizer(texts, vocab_size, args.out, min_frequency=min_frequency, overwrite=args.overwrite,
                    show_progress=not args.quiet)
    return 0


def _register_prepare(sub) -> None:
    from ..data.sources import DEFAULT_EXTENSIONS

    p = sub.add_parser(
        "prepare", help="raw text, HTML, JSONL or parquet -> curated token shards with a manifest",
        description="Turn raw local sources into training shards: extract, filter, de-duplicate, "
                    "decontaminate, split, mix and tokenize, reporting each stage's counts on stderr. "
                    "The output directory is written atomically: a failed run leaves nothing.",
        epilog=PREPARE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="a folder, text/HTML file, .jsonl or .parquet; NAME=PATH names its source (default "
                        "name: the folder or file name); several paths may share a name")
    p.add_argument("--out", required=True, help="dataset directory to create (must not exist or be empty)")
    p.add_argument("--default", action="store_true",
                   help="add the default corpus: Python's bundled docs as 'prose', its standard library as 'code'")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--tokenizer", default="smollm2-135m",
                   help="tokenizer.json file, HF directory, .gguf file or model name (default smollm2-135m)")
    g = p.add_argument_group("reading")
    g.add_argument("--text-field", default="text", help="JSONL/parquet field holding the text (default text)")
    g.add_argument("--ext", default=",".join(DEFAULT_EXTENSIONS),
                   help="comma-separated suffixes a folder walk reads, e.g. .md,.py (default: "
                        f"{' '.join(DEFAULT_EXTENSIONS)}); files named as inputs are read whatever their suffix")
    g.add_argument("--max-docs", default=None, help="read at most this many documents from each source")
    g = p.add_argument_group("curation")
    g.add_argument("--filter", default=None, metavar="NAME=VALUE,...",
                   help="change quality thresholds, e.g. min_words=50,max_symbol_ratio=0.3; 'off' disables "
                        "the filters (names: see hybridlm/data/filters.py)")
    g.add_argument("--jaccard", default="0.8",
                   help="near-duplicate Jaccard threshold of word 5-gram sets (default 0.8)")
    g.add_argument("--num-perm", default="128", help="MinHash hash functions (default 128)")
    g.add_argument("--no-dedup", action="store_true", help="skip exact and near de-duplication")
    g.add_argument("--decontaminate", action="extend", nargs="+", default=[], metavar="FILE",
                   help="evaluation files or folders: documents sharing a word n-gram with them are dropped")
    g.add_argument("--ngram", default="13", help="n-gram length for --decontaminate, in words (default 13)")
    g = p.add_argument_group("output")
    g.add_argument("--mix", default=None, metavar="SOURCE=WEIGHT,...",
                   help="share of each source in the output characters, e.g. prose=0.7,code=0.3 "
                        "(default: as the sources come)")
    g.add_argument("--mix-total", default="natural",
                   help="output size: natural (as the input; scarce sources repeat, abundant ones are "
                        "sampled) or no-repeat (largest output without repeats)")
    g.add_argument("--val-fraction", default="0.05", help="documents of each source held out (default 0.05)")
    g.add_argument("--seed", default="0", help="seeds the split, the mix and MinHash (default 0)")
    g.add_argument("--quiet", action="store_true", help="no progress bars or stage lines")
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process (default, needs no Ray); ray: extract, filters, dedup, "
                        "decontamination and tokenization as Ray tasks over partitions of the corpus, with "
                        "exact and MinHash dedup shuffled by key across partitions; the output is identical "
                        "(pip install 'hybridlm[ray]')")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join a running Ray cluster (e.g. 10.0.0.5:6379 or ray://head:10001); without it a "
                        "private local Ray is started, bound to 127.0.0.1, and stopped at the end")
    g.add_argument("--ray-workers", default=None, metavar="N",
                   help="CPUs of the local Ray started without --ray-address (default: all)")
    g.add_argument("--partition-docs", default="2000", metavar="N",
                   help="raw records per Ray map task (default 2000)")
    g.add_argument("--object-store-mb", default=None, metavar="MIB",
                   help="object store of the local Ray started without --ray-address, in MiB (default: Ray's, "
                        "30%% of RAM); the partitions' texts wait there and Ray spills them to disk beyond it")
    p.set_defaults(func=cmd_prepare)


def register(sub) -> None:
    """Add the `data` and `tokenizer` command groups to the `hybridlm` parser."""
    data = sub.add_parser("data", help="prepare training data: curation into token shards",
                          description="Data curation: `hybridlm data prepare --help` for the pipeline.")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    _register_prepare(data_sub)

    tok = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer",
                         description="Tokenizers: `hybridlm tokenizer train --help`.")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", required=True, metavar="COMMAND")
    p = tok_sub.add_parser(
        "train", help="train a byte-level BPE on prepared or raw text, saved as tokenizer.json",
        description="Train a byte-level BPE tokenizer (the `tokenizers` library; GPT-2's pre-tokenizer and "
                    "byte alphabet, <|endoftext|> as end of document) on the train split of prepared datasets "
                    "or on raw files, and save a standard tokenizer.json that transformers' "
                    "PreTrainedTokenizerFast and `hybridlm data prepare --tokenizer` load.",
        epilog=TOKENIZER_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="prepared dataset directories (their documents.jsonl) or raw folders and files")
    p.add_argument("--vocab-size", required=True, help="tokens in the vocabulary, bytes and <|endoftext|> included")
    p.add_argument("--out", required=True,
                   help="a .json path (one tokenizer.json) or a directory (tokenizer.json + tokenizer_config.json)")
    p.add_argument("--default", action="store_true", help="train on the default corpus (raw)")
    p.add_argument("--min-frequency", default="2", help="a pair merges only if seen this often (default 2)")
    p.add_argument("--text-field", default="text", help="JSONL/parquet field holding the text (default text)")
    p.add_argument("--max-docs", default=None, help="documents taken from each input at most")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_tokenizer_train)
