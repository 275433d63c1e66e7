import pytest

from hybridlm.data.documents import DataError, Document
from hybridlm.data.filters import FilterConfig, quality_filter, rejection


def test_prose_passes(make_prose):
    assert rejection(make_prose(1), FilterConfig()) is None


def test_rules_reject_with_their_reason(make_prose):
    config = FilterConfig()
    assert rejection("Too short to keep.", config) == "too_short"
    symbols = " ".join(["#### $$ %% ^^ && ** (( )) {{ }} ~~ @@ | word"] * 3)
    assert rejection(symbols, config) == "symbol_ratio"
    assert rejection(" ".join(["1234 5678 90.5 -- 42"] * 6), config) == "alpha_words"
    spam = "\n".join(["Buy cheap pills now at our shop today"] * 10)
    assert rejection(spam, config) == "dup_lines"
    chant = " ".join(["we will rock you"] * 12) + " " + make_prose(2, 40)
    assert rejection(chant, config) == "top_2gram"
    assert rejection(make_prose(3) + " Lorem ipsum dolor sit amet.", config) == "banned_phrase"
    assert rejection(" ".join(["a"] * 30), config) == "word_length"


def test_thresholds_are_configurable(make_prose):
    text = make_prose(4, words=30)
    assert rejection(text, FilterConfig()) is None
    assert rejection(text, FilterConfig.from_overrides("min_words=50")) == "too_short"
    with pytest.raises(DataError, match="min_words"):
        FilterConfig.from_overrides("min_wordz=3")
    with pytest.raises(DataError, match="needs a number"):
        FilterConfig.from_overrides("max_symbol_ratio=lots")


def test_stage_counts_reasons_per_source(make_prose):
    docs = [Document(make_prose(5), "prose", "a"), Document("#$%^&* " * 40, "junk", "b"),
            Document("same line again\n" * 30, "junk", "c"), Document(make_prose(6), "junk", "d")]
    kept, report = quality_filter(docs, FilterConfig())
    assert [d.origin for d in kept] == ["a", "d"]
    assert (report.docs_in, report.kept) == (4, 2)
    assert sum(report.removed.values()) == 2 and set(report.removed) <= {"symbol_ratio", "alpha_words", "dup_lines",
                                                                          "word_length", "top_2gram"}
    assert report.by_source["junk"] == {"in": 3, "kept": 1, "removed": 2}
