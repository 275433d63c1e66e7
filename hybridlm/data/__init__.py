"""Corpus curation: extract, filter, dedup, mix, decontaminate, tokenize into shards.

The entry point is `prepare.prepare(out, PrepareConfig(...))` (`hybridlm data prepare`); each stage
is a module with a function from documents to (kept documents, StageReport): extract.py,
filters.py, dedup.py (with minhash.py), decontam.py, split.py, mix.py, tokenization.py. shards.py is
the on-disk format the trainer reads; tokenizer_training.py backs `hybridlm tokenizer train`.
"""
