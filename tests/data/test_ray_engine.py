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


@pytest.mark.slow
def test_a_killed_worker_loses_and_duplicates_nothing(ray_cluster, corpus_module, tiny_tokenizer, local_run, tmp_path):
    marker = tmp_path / "killed"
    options = RayOptions(partition_docs=40, reducers=3, kill_once=str(marker))
    killed = prepare(tmp_path / "killed_run", _config(corpus_module, tiny_tokenizer), ray=options)
    assert marker.exists()  # partition 1's first worker did die
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
