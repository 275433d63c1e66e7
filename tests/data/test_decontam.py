import json

import pytest

from hybridlm.data.decontam import DecontamConfig, EvalNgrams, decontaminate
from hybridlm.data.documents import DataError, Document

QUESTION = ("Which planet in our solar system has the largest number of confirmed moons orbiting it "
            "according to recent astronomical surveys?")


def test_a_contaminated_document_is_dropped_and_a_clean_one_kept(make_prose):
    index = EvalNgrams([QUESTION, "Too short to match."], n=13)
    leaked = make_prose(1, 60) + " " + QUESTION.upper().replace(" ", "  ").replace("?", "!") + " " + make_prose(2, 60)
    near_miss = make_prose(3, 60) + " " + " ".join(QUESTION.split()[:12]) + " " + make_prose(4, 60)
    docs = [Document(leaked, "web", "leaked"), Document(near_miss, "web", "near_miss"),
            Document(make_prose(5), "web", "clean")]
    kept, report = decontaminate(docs, index)
    assert [d.origin for d in kept] == ["near_miss", "clean"]  # 12 shared words are not a 13-gram
    assert dict(report.removed) == {"contaminated": 1}
    assert report.info["eval_documents"] == 2 and report.info["eval_documents_too_short"] == 1


def test_evaluation_files_count_every_string_field(tmp_path, make_prose):
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps({"question": "What is it?", "choices": [QUESTION, "no"], "label": 0}) + "\n")
    index = EvalNgrams.from_files([str(path)], n=13)
    assert index.shared(make_prose(6, 30) + " " + QUESTION) == len(QUESTION.split()) - 12
    assert index.shared(make_prose(7)) == 0


def test_missing_evaluation_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        DecontamConfig(files=(str(tmp_path / "absent.jsonl"),))
