"""Retrieval-augmented generation: chunk documents, embed them with a sentence encoder, index them
in SQLite, retrieve (dense cosine, BM25, hybrid) and answer with numbered citations."""
