"""Corpus curation: extract, filter, dedup, mix, decontaminate, tokenize into shards."""
