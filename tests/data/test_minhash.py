import numpy as np

from hybridlm.data.minhash import (MinHashConfig, MinHasher, candidate_pairs, estimated_jaccard, lsh_bands,
                                   near_duplicate_groups)


def test_signature_agreement_estimates_jaccard():
    hasher = MinHasher(MinHashConfig(num_perm=256))
    rng = np.random.default_rng(0)
    universe = rng.choice(2**31, size=3000, replace=False).astype(np.uint64)
    for overlap in (0.2, 0.5, 0.9):
        shared = int(overlap * 1000)
        a, b = universe[:1000], universe[1000 - shared:2000 - shared]
        truth = shared / (2000 - shared)
        estimate = estimated_jaccard(hasher.signature_of_shingles(a), hasher.signature_of_shingles(b))
        assert abs(estimate - truth) < 0.08, (overlap, truth, estimate)


def test_signatures_are_reproducible(make_prose):
    text = make_prose(1)
    a, b = MinHasher(MinHashConfig()).signature(text), MinHasher(MinHashConfig()).signature(text)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint32 and a.shape == (128,)
    assert not np.array_equal(a, MinHasher(MinHashConfig(seed=1)).signature(text))


def test_bands_put_the_s_curve_at_the_threshold():
    for threshold in (0.5, 0.7, 0.8, 0.9):
        bands, rows = lsh_bands(threshold, 128)
        assert bands * rows <= 128
        assert abs((1 / bands) ** (1 / rows) - threshold) < 0.1


def test_lsh_finds_a_near_duplicate_and_not_a_stranger(make_prose):
    config = MinHashConfig()
    base = make_prose(10, words=200)
    words = base.split()
    words[50] = words[120] = words[180] = "changed"
    texts = [base, make_prose(11, words=200), " ".join(words)]
    hasher = MinHasher(config)
    signatures = np.stack([hasher.signature(t) for t in texts])
    bands, rows = lsh_bands(config.threshold, config.num_perm)
    assert (0, 2) in candidate_pairs(signatures, bands, rows)
    groups, _, _ = near_duplicate_groups(signatures, config)
    assert groups.tolist() == [0, 1, 0]
