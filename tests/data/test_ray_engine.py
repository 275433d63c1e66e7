"""`--engine ray` against `--engine local`: the same documents, shard bytes and manifest, with
duplicates planted across partitions and a worker killed mid-run."""

import json

import pytest

ray = pytest.importorskip("ray")

from hybridlm.data.minhash import MinHashConfig  # noqa: E402
from hybridlm.data.decontam import DecontamConfig  # noqa: E402
from hybridlm.data.prepare import PrepareConfig, prepare  # noqa: E402
from hybridlm.data.ray_engine import RayOptions  # noqa: E402


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray (2 CPUs, 127.0.0.1) for the module; prepare joins it instead of starting its own."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus_module(tmp_path_factory):
    """120 documents in one JSONL (max_docs=120 reads them all): every 10th is an exact copy (re-cased, re-spaced) of one 60 lines
    earlier, every 10th + 5 a near copy (one word changed); an evaluation file shares a document."""
    from tests.data.conftest import prose_maker

    make_prose, tmp_path, texts = prose_maker(), tmp_path_factory.mktemp("corpus"), []
    for i in range(120):
        if i >= 60 and i % 10 == 0:
            texts.append("  " + texts[i - 60].upper())
        elif i >= 60 and i % 10 == 5:
            words = texts[i - 60].split()
            texts.append(" ".join(words[:70] + ["zzzz"] + words[71:]))
        else:
            texts.append(make_prose(i))
    path = tmp_path / "web.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (tmp_path / "eval.txt").write_text(texts[33])
    return path, tmp_path / "eval.txt"


def _config(corpus, tokenizer) -> PrepareConfig:
    web, evaluation = corpus
    return PrepareConfig(inputs=(f"web={web}",), default_corpus=True, max_docs=120, tokenizer=tokenizer,
                         near_dedup=MinHashConfig(), decontam=DecontamConfig(files=(str(evaluation),)),
                         show_progress=False)


def _files(path):
    return {p.name: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def local_run(corpus_module, tiny_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out"
    return out, prepare(out, _config(corpus_module, tiny_tokenizer))


def test_ray_equals_local_with_duplicates_across_partitions(ray_cluster, corpus_module, tiny_tokenizer, local_run,
                                                            tmp_path):
    local_dir, local = local_run
    stages = {s["stage"]: s for s in local["stages"]}
    assert stages["exact_dedup"]["removed"]["exact_duplicate"] >= 6  # the planted copies, 60 documents apart
    assert stages["near_dedup"]["removed"]["near_duplicate"] >= 6
    assert stages["decontaminate"]["removed"] == {"contaminated": 1}
    # 40 records a partition: every planted pair sits in two different partitions
    on_ray = prepare(tmp_path / "ray", _config(corpus_module, tiny_tokenizer), ray=RayOptions(partition_docs=40, reducers=3))
    assert on_ray == local
    assert _files(tmp_path / "ray") == _files(local_dir)  # shards, documents.jsonl, tokenizer, manifest


def test_a_killed_worker_loses_and_duplicates_nothing(ray_cluster, corpus_module, tiny_tokenizer, local_run, tmp_path):
    marker = tmp_path / "killed"
    options = RayOptions(partition_docs=40, reducers=3, kill_once=str(marker))
    killed = prepare(tmp_path / "killed_run", _config(corpus_module, tiny_tokenizer), ray=options)
    assert marker.exists()  # partition 1's first worker did die
    assert marker.with_name("killed.encode").exists()  # and so did the encoder given the first chunk
    assert killed == local_run[1]  # Ray re-ran it: nothing lost, nothing twice
    assert _files(tmp_path / "killed_run") == _files(local_run[0])


def test_options_are_checked():
    with pytest.raises(ValueError, match="at least 1"):
        RayOptions(partition_docs=0)


def test_cli_ray_options_need_the_ray_engine(tmp_path, capsys):
    from hybridlm.cli import main

    assert main(["data", "prepare", "--default", "--out", str(tmp_path / "x"), "--ray-workers", "2"]) != 0
    assert "need --engine ray" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_shuffles_find_what_the_local_engine_finds():
    """The map parts and reducers by themselves (no Ray): 3 uneven partitions, 3 reducers, against
    the local engine's exact first-of-key rule and `candidate_pairs_of_keys` over the survivors."""
    import numpy as np

    from hybridlm.data.minhash import band_keys, candidate_pairs_of_keys
    from hybridlm.data.ray_engine import _band_parts, _band_reduce, _exact_parts, _exact_reduce

    rng = np.random.default_rng(0)
    n, reducers, sizes = 300, 3, [120, 7, 173]
    signatures = rng.integers(0, 4, size=(n, 12), dtype=np.uint32)  # 4 values a row: many shared bands
    keys = band_keys(signatures, 4, 3)
    exact = np.array([k.to_bytes(2, "little") * 8 for k in rng.integers(0, 250, n).tolist()], dtype="V16")
    offsets = np.cumsum([0] + sizes)
    parts = [(exact[lo:hi], keys[lo:hi]) for lo, hi in zip(offsets[:-1], offsets[1:])]

    exact_out = [_exact_parts(e, reducers) for e, _ in parts]
    duplicates = np.sort(np.concatenate([offsets[p] + i for p, i in (
        _exact_reduce(*[out[b] for out in exact_out]) for b in range(reducers))]))
    first = np.unique(exact, return_index=True)[1]
    assert duplicates.tolist() == sorted(set(range(n)) - set(first.tolist()))

    before = np.ones(n, dtype=bool)
    before[duplicates] = False
    survivor = np.where(before, np.cumsum(before) - 1, -1)
    band_out = [_band_parts(k, reducers) for _, k in parts]
    pairs = {p for b in range(reducers) for p in _band_reduce(survivor, offsets[:-1], *[out[b] for out in band_out])}
    expected = candidate_pairs_of_keys(keys[before])
    assert len(expected) > 50 and pairs == expected
