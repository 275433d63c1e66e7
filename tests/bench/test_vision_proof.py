"""bench/vision_proof.py runs end to end on tiny settings and reports what it promises (its
figures come from the full run in the README, not from here)."""

import json

import pytest

from bench import vision_proof


@pytest.mark.slow  # ~20 s idle, a minute on a loaded machine: CLIP, three models and generation, each tiny
@pytest.mark.usefixtures("one_thread")
def test_vision_proof_reports_every_model_and_the_examples(tmp_path, capsys):
    assert vision_proof.main(["--decoders", "transformer", "--clip-steps", "2", "--text-steps", "2", "--steps", "2",
                              "--eval", "16", "--examples", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {r["model"]: r for r in report["results"]}
    assert set(rows) == {"text-only", "flamingo", "tokens"}
    assert rows["flamingo"]["gates_zero_bitwise"] is True  # at step 0 the LM is untouched
    for name in ("flamingo", "tokens"):  # the forward and generation through the cache agree
        assert rows[name]["held_out_acc"] == rows[name]["generate_acc"]
    assert len(report["examples"]) == 4 and all((tmp_path / e["file"]).is_file() for e in report["examples"])
    assert 0 < report["chance"] < 0.5
