"""The lm-eval adapter scores like lm-eval's own HF backend on the same tiny transformers model and a
local task (YAML over JSONL, no hub), and our own multiple-choice scorer equals the adapter."""

import math

import pytest

lm_eval = pytest.importorskip("lm_eval")

from hybridlm.checkpoints.registry import load_model  # noqa: E402
from hybridlm.eval.multiple_choice import evaluate_mc  # noqa: E402
from hybridlm.eval.tasks import read_task  # noqa: E402

TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: {output_type}
doc_to_text: "{doc_to_text}"
{extra}
"""


def write_task(folder, name, data, output_type="multiple_choice", doc_to_text="{{context}}", extra=""):
    (folder / f"{name}.yaml").write_text(TASK_YAML.format(name=name, data=data, output_type=output_type,
                                                          doc_to_text=doc_to_text, extra=extra))


MC_EXTRA = """doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_DATASETS_OFFLINE", "1")
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf-datasets")))
    yield
    mp.undo()


def evaluate(model, model_args, folder, task, limit=None):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    import hybridlm.eval.harness  # noqa: F401  registers "hybridlm"

    out = simple_evaluate(model=model, model_args=model_args, tasks=[task], task_manager=TaskManager(include_path=str(folder), include_defaults=False),
                          batch_size=4, device="cpu", log_samples=True, limit=limit, bootstrap_iters=0)
    return out["results"][task], out["samples"][task]


@pytest.fixture(scope="module")
def mc_runs(tiny_hf_dir, tmp_path_factory, offline):
    from tests.eval.eval_helpers import write_mc

    folder = tmp_path_factory.mktemp("tasks")
    rows = write_mc(folder / "mc.jsonl", n=24)
    write_task(folder, "tiny_mc", folder / "mc.jsonl", extra=MC_EXTRA)
    hf = evaluate("hf", f"pretrained={tiny_hf_dir},dtype=float32", folder, "tiny_mc")
    ours = evaluate("hybridlm", f"pretrained={tiny_hf_dir}", folder, "tiny_mc")
    return folder, rows, hf, ours


def loglikelihoods(samples):
    by_doc = sorted(samples, key=lambda s: s["doc_id"])
    return [[float(r[0][0]) for r in s["resps"]] for s in by_doc]


def test_adapter_equals_hf_backend_on_multiple_choice(mc_runs):
    _, rows, (hf_res, hf_samples), (our_res, our_samples) = mc_runs
    assert our_res["acc,none"] == hf_res["acc,none"]
    assert our_res["acc_norm,none"] == hf_res["acc_norm,none"]
    hf_ll, our_ll = loglikelihoods(hf_samples), loglikelihoods(our_samples)
    assert len(our_ll) == len(rows) and all(len(x) == 4 for x in our_ll)
    for a, b in zip(hf_ll, our_ll):
        assert b == pytest.approx(a, abs=1e-4)
    # the task is not degenerate: choices get different scores
    assert any(max(x) - min(x) > 0.5 for x in hf_ll)


def test_our_mc_scorer_equals_the_adapter(mc_runs, tiny_hf_dir):
    folder, _, _, (our_res, our_samples) = mc_runs
    lm = load_model(tiny_hf_dir)
    task = read_task(folder / "mc.jsonl", "multiple-choice")
    result = evaluate_mc(lm.model, lm.tokenizer, task.items)
    assert result.accuracy == our_res["acc,none"] and result.accuracy_norm == our_res["acc_norm,none"]
    for a, b in zip(loglikelihoods(our_samples), result.logprobs):
        assert b == pytest.approx(a, abs=1e-5)


@pytest.mark.slow  # four more harness runs, ~25 s
def test_rolling_and_generation_equal_hf_backend(tiny_hf_dir, tmp_path, offline):
    import json

    from tests.eval.eval_helpers import corpus_lines

    lines = corpus_lines(12, seed=3)
    (tmp_path / "text.jsonl").write_text("".join(json.dumps({"text": " ".join(lines[i:i + 6])}) + "\n"
                                                 for i in range(0, 12, 6)))
    write_task(tmp_path, "tiny_roll", tmp_path / "text.jsonl", output_type="loglikelihood_rolling",
               doc_to_text="", extra='doc_to_target: "{{text}}"\nmetric_list:\n  - metric: word_perplexity\n')
    gen_rows = [{"q": l[:30], "a": "x"} for l in lines[:4]]
    (tmp_path / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gen_rows))
    write_task(tmp_path, "tiny_gen", tmp_path / "gen.jsonl", output_type="generate_until", doc_to_text="{{q}}",
               extra='doc_to_target: "{{a}}"\ngeneration_kwargs:\n  until: ["."]\n  max_gen_toks: 12\n'
                     '  do_sample: false\nmetric_list:\n  - metric: exact_match\n')
    for task in ("tiny_roll", "tiny_gen"):
        hf_res, hf_s = evaluate("hf", f"pretrained={tiny_hf_dir},dtype=float32,max_length=48", tmp_path, task)
        our_res, our_s = evaluate("hybridlm", f"pretrained={tiny_hf_dir},max_length=48", tmp_path, task)
        hf_s, our_s = sorted(hf_s, key=lambda s: s["doc_id"]), sorted(our_s, key=lambda s: s["doc_id"])
        if task == "tiny_roll":  # 2 documents of ~60 tokens: several 48-token windows each
            assert our_res["word_perplexity,none"] == pytest.approx(hf_res["word_perplexity,none"], rel=1e-4)
            for a, b in zip(hf_s, our_s):
                assert float(b["resps"][0][0]) == pytest.approx(float(a["resps"][0][0]), abs=1e-3)
                assert math.isfinite(float(b["resps"][0][0]))
        else:
            assert [s["resps"][0][0] for s in our_s] == [s["resps"][0][0] for s in hf_s]
