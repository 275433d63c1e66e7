"""Streaming curation (partitions, texts spilled to disk) against the in-memory reference: the same
kept documents and reports, the same output bytes, and memory that does not grow with the text."""

import json
import tracemalloc

import numpy as np
import pytest

from hybridlm.data.decontam import DecontamConfig
from hybridlm.data.minhash import MinHashConfig, MinHasher, band_keys, candidate_pairs, candidate_pairs_of_keys, lsh_bands
from hybridlm.data.mix import MixConfig
from hybridlm.data.prepare import PrepareConfig, _records, curate, gather_sources, prepare
from hybridlm.data.store import DiskStore, MemoryStore
from hybridlm.data.streaming import curate_streaming

from .conftest import prose_maker


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """120 documents: every 10th an exact copy (re-cased) of one 60 earlier, every 10th + 5 a near copy;
    an evaluation file shares one document (as test_ray_engine's corpus)."""
    make, tmp, texts = prose_maker(), tmp_path_factory.mktemp("corpus"), []
    for i in range(120):
        if i >= 60 and i % 10 == 0:
            texts.append("  " + texts[i - 60].upper())
        elif i >= 60 and i % 10 == 5:
            words = texts[i - 60].split()
            texts.append(" ".join(words[:70] + ["zzzz"] + words[71:]))
        else:
            texts.append(make(i))
    (tmp / "web.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (tmp / "eval.txt").write_text(texts[33])
    return tmp


def _config(corpus, tokenizer, **kw):
    return PrepareConfig(inputs=(f"web={corpus / 'web.jsonl'}",), default_corpus=True, max_docs=120, tokenizer=tokenizer,
                         near_dedup=MinHashConfig(), decontam=DecontamConfig(files=(str(corpus / "eval.txt"),)),
                         show_progress=False, **kw)


def test_streaming_keeps_what_the_in_memory_stages_keep(corpus, tiny_tokenizer, tmp_path):
    config = _config(corpus, tiny_tokenizer)
    docs, reports = curate(config, gather_sources(config))
    store = DiskStore(tmp_path / "spill.jsonl")
    refs, streamed = curate_streaming(config, _records(gather_sources(config)), store, False, partition_docs=7)
    assert [r.as_dict() for r in streamed] == [r.as_dict() for r in reports]
    removed = {r.stage: sum(r.removed.values()) for r in reports}
    # the planted copies (6 exact, 6 near, 60 documents apart: across partitions of 7), and the default corpus's own
    assert removed["exact_dedup"] >= 6 and removed["near_dedup"] >= 6 and removed["decontaminate"] == 1
    back = list(store.read(r.index for r in refs))
    assert [(d.text, d.source, d.origin) for d in back] == [(d.text, d.source, d.origin) for d in docs]
    assert [r.chars for r in refs] == [len(d.text) for d in docs]


def test_streaming_prepare_writes_the_in_memory_bytes(corpus, tiny_tokenizer, tmp_path):
    config = _config(corpus, tiny_tokenizer, mix=MixConfig.parse("web=0.7,prose=0.2,code=0.1"))
    streamed = prepare(tmp_path / "stream", config)
    reference = prepare(tmp_path / "memory", config, in_memory=True)
    files = lambda d: {p.name: p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}  # noqa: E731
    assert files(tmp_path / "stream") == files(tmp_path / "memory")
    assert streamed["content_hash"] == reference["content_hash"]
    assert any(a["epochs"] > 1 for a in streamed["stages"][-1]["info"]["achieved"]["train"].values())  # repeats too
    assert not list(tmp_path.glob(".hybridlm-spill-*"))  # the spill files are gone


def test_band_keys_give_the_candidate_pairs_of_the_signatures():
    make = prose_maker()
    texts = [make(i) for i in range(40)]
    texts += [t.replace(t.split()[3], "qqq", 1) for t in texts[:10]]  # near copies
    hasher, config = MinHasher(MinHashConfig()), MinHashConfig()
    sigs = np.stack([hasher.signature(t) for t in texts])
    bands, rows = lsh_bands(config.threshold, config.num_perm)
    pairs = candidate_pairs(sigs, bands, rows)
    assert len(pairs) >= 5 and candidate_pairs_of_keys(band_keys(sigs, bands, rows)) == pairs


def test_disk_store_reads_back_what_went_in(tmp_path):
    from hybridlm.data.documents import Document

    docs = [Document("é\nx" * i, f"s{i % 3}", f"o{i}") for i in range(50)]
    disk, memory = DiskStore(tmp_path / "d.jsonl"), MemoryStore()
    refs = [disk.append(d) for d in docs]
    assert [(r.index, r.source, r.chars) for r in refs] == [(r.index, r.source, r.chars) for r in map(memory.append, docs)]
    order = [7, 3, 49, 0, 3]
    assert list(disk.read(order)) == [docs[i] for i in order]
    disk.close()


@pytest.mark.slow
def test_streaming_memory_does_not_grow_with_the_text(tmp_path):
    """Python's peak allocations while curating 4x more text: the in-memory reference grows with the
    corpus, the streaming engine by its small per-document records only."""
    from bench.data_engines import write_corpus

    def peak(corpus, streaming):
        config = PrepareConfig(inputs=(f"web={corpus}",), show_progress=False, near_dedup=MinHashConfig())
        tracemalloc.start()
        if streaming:
            store = DiskStore(tmp_path / f"{corpus.stem}.spill")
            curate_streaming(config, _records(gather_sources(config)), store, False, partition_docs=200)
            store.close()
        else:
            curate(config, gather_sources(config))
        used = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return used

    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    write_corpus(small, 1.0)
    write_corpus(large, 4.0)
    stream_small, stream_large = peak(small, True), peak(large, True)
    memory_small, memory_large = peak(small, False), peak(large, False)
    assert memory_large > 3 * memory_small  # the reference holds every text
    assert stream_large < 1.6 * stream_small  # one partition's texts, plus ~100 bytes a document
