from collections import Counter

import numpy as np
import pytest

from hybridlm.data.documents import DataError, Document, StageReport
from hybridlm.data.mix import MixConfig, mix


def _corpus(seed=0):
    rng = np.random.default_rng(seed)
    prose = [Document("p" * int(rng.integers(200, 2000)), "prose", f"p{i}") for i in range(60)]
    code = [Document("c" * int(rng.integers(200, 2000)), "code", f"c{i}") for i in range(400)]
    return prose + code


def _share(docs, source):
    return sum(len(d.text) for d in docs if d.source == source) / sum(len(d.text) for d in docs)


@pytest.mark.parametrize("weights", ["prose=0.7,code=0.3", "prose=1,code=3", "prose=0.5,code=0.5"])
def test_weights_are_met_by_sampling_and_repetition(weights):
    docs = _corpus()
    config = MixConfig.parse(weights)
    target = dict(config.weights)["prose"] / sum(w for _, w in config.weights)
    report = StageReport("mix")
    out, achieved = mix(docs, config, ["prose", "code"], report=report)
    assert abs(_share(out, "prose") - target) < 0.01
    assert abs(achieved["prose"]["share"] - target) < 0.01
    assert abs(sum(len(d.text) for d in out) / sum(len(d.text) for d in docs) - 1) < 0.01  # natural size
    if target > 0.2:  # prose is ~13% of the input: it must repeat
        assert max(Counter(d.origin for d in out if d.source == "prose").values()) > 1
        assert achieved["prose"]["epochs"] > 1
    assert report.kept + sum(report.removed.values()) == report.docs_in == len(docs)


def test_no_repeat_total_takes_the_scarce_source_whole():
    docs = _corpus()
    out, achieved = mix(docs, MixConfig.parse("prose=0.7,code=0.3", total="no-repeat"), ["prose", "code"])
    assert max(Counter(d.origin for d in out).values()) == 1
    assert achieved["prose"]["unique_documents"] == 60
    assert abs(_share(out, "prose") - 0.7) < 0.01


def test_mixing_is_seeded():
    docs, config = _corpus(), MixConfig.parse("prose=0.6,code=0.4", seed=3)
    first = [d.origin for d in mix(docs, config, ["prose", "code"])[0]]
    assert first == [d.origin for d in mix(docs, config, ["prose", "code"])[0]]
    assert first != [d.origin for d in mix(docs, MixConfig.parse("prose=0.6,code=0.4", seed=4), ["prose", "code"])[0]]


def test_no_weights_keeps_the_sources_as_they_come():
    docs = _corpus()
    out, _ = mix(docs, MixConfig(), ["prose", "code"])
    assert sorted(d.origin for d in out) == sorted(d.origin for d in docs)


def test_bad_weights_say_why():
    with pytest.raises(DataError, match="SOURCE=WEIGHT"):
        MixConfig.parse("prose:0.7")
    with pytest.raises(DataError, match="unknown source 'poetry'"):
        MixConfig.parse("prose=1,poetry=1").shares(["prose", "code"])
    with pytest.raises(DataError, match="no weight for source 'code'"):
        MixConfig.parse("prose=1").shares(["prose", "code"])
    with pytest.raises(DataError, match="all be zero"):
        MixConfig.parse("prose=0,code=0")
    with pytest.raises(DataError, match="unknown mix total"):
        MixConfig(total="double")
