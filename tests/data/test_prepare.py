import json

import numpy as np
import pytest

from hybridlm.data.decontam import DecontamConfig
from hybridlm.data.prepare import PrepareConfig, prepare
from hybridlm.data.shards import TokenShards
from hybridlm.tokenizer import Tokenizer

EVAL = ("In which year did the fictional explorer Amelia Quarry first cross the frozen northern sea "
        "on foot with her seven dogs?")


@pytest.fixture
def corpus(tmp_path, make_prose):
    """Two sources with one document each for filters, exact dedup, near dedup and decontamination to drop."""
    prose, code = tmp_path / "in" / "prose", tmp_path / "in" / "code"
    prose.mkdir(parents=True)
    code.mkdir()
    for i in range(8):
        (prose / f"doc{i}.txt").write_text(make_prose(100 + i))
    (prose / "page.html").write_text(f"<html><body><nav>MENU</nav><main><p>{make_prose(200)}</p></main></body></html>")
    (prose / "copy.md").write_text(make_prose(101).upper())  # exact duplicate of doc1 after normalization
    near = make_prose(102).split()
    near[10] = "edited"
    (prose / "near.txt").write_text(" ".join(near))  # near duplicate of doc2
    (prose / "junk.txt").write_text("@@ ## $$ %% ^^ && ** " * 20)  # filtered: symbols
    (prose / "leak.txt").write_text(make_prose(300, 60) + " " + EVAL + " " + make_prose(301, 60))
    for i in range(5):
        (code / f"mod{i}.py").write_text(f'"""Module {i}."""\n\n\ndef function_{i}(value):\n'
                                         f'    """{make_prose(400 + i, 30)}"""\n    return value * {i} + 1\n')
    (tmp_path / "eval.jsonl").write_text(json.dumps({"question": EVAL, "answer": "1911"}) + "\n")
    return tmp_path


def _config(corpus, tokenizer, **overrides):
    fields = dict(inputs=(str(corpus / "in" / "prose"), str(corpus / "in" / "code")), tokenizer=tokenizer,
                  extensions=(".txt", ".md", ".html", ".py"), val_fraction=0.2, show_progress=False,
                  decontam=DecontamConfig(files=(str(corpus / "eval.jsonl"),)))
    return PrepareConfig(**{**fields, **overrides})


def test_end_to_end_counts_add_up_and_tokens_decode_to_the_kept_text(corpus, tiny_tokenizer):
    out = corpus / "data"
    manifest = prepare(out, _config(corpus, tiny_tokenizer))
    assert manifest == json.loads((out / "manifest.json").read_text())
    stages = {s["stage"]: s for s in manifest["stages"]}
    assert [s["stage"] for s in manifest["stages"]] == ["extract", "filters", "exact_dedup", "near_dedup",
                                                        "decontaminate", "split", "mix"]
    assert stages["extract"]["in"] == 18
    assert stages["filters"]["removed"] == {"symbol_ratio": 1}
    assert stages["exact_dedup"]["removed"] == {"exact_duplicate": 1}
    assert stages["near_dedup"]["removed"] == {"near_duplicate": 1}
    assert stages["decontaminate"]["removed"] == {"contaminated": 1}
    previous = None
    for stage in manifest["stages"]:
        assert stage["kept"] + sum(stage["removed"].values()) == stage["in"]
        for counts in stage["by_source"].values():
            assert counts["kept"] + counts["removed"] == counts["in"]
        assert previous is None or stage["in"] == previous
        previous = stage["kept"]
    assert stages["split"]["info"]["train"] + stages["split"]["info"]["val"] == 14

    records = [json.loads(line) for line in (out / "documents.jsonl").read_text().splitlines()]
    assert len(records) == 14 and {r["source"] for r in records} == {"prose", "code"}
    assert not any("MENU" in r["text"] or "@@" in r["text"] or "Amelia" in r["text"] for r in records)
    tok = Tokenizer.from_file(out / "tokenizer")
    sep = manifest["eos_token_id"]
    assert sep == tok.token_to_id("<|endoftext|>") == tok.eos_token_ids[0] and manifest["dtype"] == "uint16"
    for split in ("train", "val"):
        shards = TokenShards(out, split)
        ids = shards.window(0, len(shards))
        assert len(shards) == manifest["splits"][split]["tokens"] == sum(manifest["tokens_by_source"][split].values())
        assert ids[-1] == sep
        pieces = np.split(ids, np.flatnonzero(ids == sep) + 1)[:-1]
        decoded = sorted(tok.decode(p[:-1].tolist()) for p in pieces)
        assert decoded == sorted(r["text"] for r in records if r["split"] == split)
    assert manifest["sources"]["prose"]["inputs"] == [str(corpus / "in" / "prose")]
    assert manifest["tokenizer"]["spec"] == tiny_tokenizer and manifest["content_hash"].startswith("sha256:")

    again = prepare(corpus / "again", _config(corpus, tiny_tokenizer))
    assert again["content_hash"] == manifest["content_hash"]  # the version is a function of the content
    other = prepare(corpus / "other", _config(corpus, tiny_tokenizer, seed=1))
    assert other["content_hash"] != manifest["content_hash"]


def test_mix_weights_are_recorded_and_met(corpus, tiny_tokenizer):
    from hybridlm.data.mix import MixConfig

    manifest = prepare(corpus / "data", _config(corpus, tiny_tokenizer, mix=MixConfig.parse("prose=0.5,code=0.5")))
    achieved = {s["stage"]: s for s in manifest["stages"]}["mix"]["info"]["achieved"]["train"]
    assert manifest["weights"] == {"prose": 0.5, "code": 0.5}
    assert abs(achieved["code"]["share"] - 0.5) < 0.1  # a handful of documents: whole-document granularity
    assert achieved["code"]["epochs"] > 1


def test_a_failed_prepare_leaves_nothing(corpus, tiny_tokenizer, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("hybridlm.data.prepare.encode_documents", broken)
    before = sorted(p.name for p in corpus.iterdir())
    with pytest.raises(RuntimeError, match="disk on fire"):
        prepare(corpus / "data", _config(corpus, tiny_tokenizer))
    assert sorted(p.name for p in corpus.iterdir()) == before  # no data/, no temporary sibling


def test_existing_output_needs_overwrite(corpus, tiny_tokenizer):
    out = corpus / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        prepare(out, _config(corpus, tiny_tokenizer))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    prepare(out, _config(corpus, tiny_tokenizer), overwrite=True)
    assert (out / "manifest.json").is_file() and not (out / "keep.txt").exists()


def test_a_vocabulary_over_65536_writes_uint32(corpus, tmp_path):
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers

    from hybridlm.tokenizer import byte_alphabet

    vocab = {ch: i for i, ch in enumerate(byte_alphabet().values())}
    vocab |= {f"filler{i}": 256 + i for i in range(70_000)}
    backend = Backend(models.BPE(vocab, [], fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<|endoftext|>"])
    backend.save(str(tmp_path / "big.json"))
    out = corpus / "data"
    manifest = prepare(out, _config(corpus, str(tmp_path / "big.json"), near_dedup=None))
    assert manifest["dtype"] == "uint32" and manifest["vocab_size"] == 70_257
    shards = TokenShards(out, "train")
    assert shards.arrays[0].dtype == np.uint32
    assert shards.window(len(shards) - 1, 1)[0] == 70_256  # the separator, beyond uint16
