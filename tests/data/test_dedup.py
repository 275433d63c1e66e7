from hybridlm.data.dedup import exact_dedup, near_dedup, normalize
from hybridlm.data.documents import Document
from hybridlm.data.minhash import MinHashConfig


def test_normalization_ignores_case_spacing_and_compatibility_forms():
    assert normalize("  Hello\u00a0WORLD\n\n\tagain ") == normalize("hello world again") == "hello world again"
    assert normalize("ﬁle") == "file"  # NFKC unfolds the ligature


def test_exact_duplicates_after_normalization_are_caught(make_prose):
    text = make_prose(1)
    docs = [Document(text, "a", "1"), Document(make_prose(2), "a", "2"),
            Document("  " + text.upper().replace(" ", "\n  "), "b", "3"), Document(text, "a", "4")]
    kept, report = exact_dedup(docs)
    assert [d.origin for d in kept] == ["1", "2"]
    assert dict(report.removed) == {"exact_duplicate": 2}
    assert report.as_dict()["by_source"]["b"] == {"in": 1, "kept": 0, "removed": 1}


def test_a_near_duplicate_pair_is_caught_and_a_different_pair_survives(make_prose):
    original = make_prose(20, words=300)
    words = original.split()
    for i in (30, 100, 170, 240):
        words[i] = "edited"
    docs = [Document(original, "web", "original"), Document(make_prose(21, words=300), "web", "other"),
            Document(make_prose(22, words=300), "books", "another"), Document(" ".join(words), "books", "copy")]
    kept, report = near_dedup(docs, MinHashConfig(threshold=0.8))
    assert [d.origin for d in kept] == ["original", "other", "another"]
    assert dict(report.removed) == {"near_duplicate": 1}
    assert report.info["bands"] * report.info["rows"] <= 128
    # at a threshold above the pair's similarity both copies stay
    kept, _ = near_dedup(docs, MinHashConfig(threshold=0.99))
    assert len(kept) == 4
