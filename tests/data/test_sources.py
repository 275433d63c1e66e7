import json

import pytest

from hybridlm.data.documents import DataError
from hybridlm.data.extract import extract
from hybridlm.data.sources import ReadOptions, parse_inputs, read_paths


def _read(sources):
    return {s.name: extract(s.read()) for s in sources}


def test_jsonl_with_a_configurable_field_and_bad_lines_counted(tmp_path):
    path = tmp_path / "crawl.jsonl"
    path.write_text("\n".join([json.dumps({"content": "first", "id": 1}), "{not json",
                               json.dumps({"other": "no content"}), json.dumps({"content": 7}), "",
                               json.dumps({"content": "second"})]) + "\n")
    (docs, report), = _read(parse_inputs([str(path)], ReadOptions(text_field="content"))).values()
    assert [d.text for d in docs] == ["first", "second"]
    assert docs[0].source == "crawl" and docs[0].origin == f"{path}:1"
    assert dict(report.removed) == {"bad_json": 1, "no_text_field": 1, "text_not_a_string": 1}


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["alpha", None, "gamma"], "n": [1, 2, 3]}), tmp_path / "rows.parquet")
    (docs, report), = _read(parse_inputs([str(tmp_path / "rows.parquet")], ReadOptions())).values()
    assert [d.text for d in docs] == ["alpha", "gamma"] and dict(report.removed) == {"no_text_field": 1}
    with pytest.raises(DataError, match="no column 'body'"):
        list(read_paths([tmp_path / "rows.parquet"], "rows", ReadOptions(text_field="body")))


def test_named_sources_folders_and_caps(tmp_path):
    for folder, n in (("a", 3), ("b", 2)):
        (tmp_path / folder / ".hidden").mkdir(parents=True)
        (tmp_path / folder / ".hidden" / "secret.txt").write_text("hidden")
        for i in range(n):
            (tmp_path / folder / f"doc{i}.txt").write_text(f"{folder} {i}")
        (tmp_path / folder / "skip.py").write_text("x = 1")
    sources = parse_inputs([f"prose={tmp_path / 'a'}", f"prose={tmp_path / 'b'}", str(tmp_path / "b")],
                           ReadOptions(max_docs=4))
    assert [s.name for s in sources] == ["prose", "b"]
    texts = {name: [d.text for d in docs] for name, (docs, _) in _read(sources).items()}
    assert texts == {"prose": ["a 0", "a 1", "a 2", "b 0"], "b": ["b 0", "b 1"]}
    code = parse_inputs([str(tmp_path / "a")], ReadOptions(extensions=(".py",)))
    assert [d.text for d in extract(code[0].read())[0]] == ["x = 1"]


def test_a_missing_input_is_an_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        parse_inputs([str(tmp_path / "absent")], ReadOptions())
