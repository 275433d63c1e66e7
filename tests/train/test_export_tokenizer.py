from hybridlm.train.export import dataset_tokenizer


def test_the_tokenizer_a_prepared_dataset_names_is_found(tiny_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    (data / "tokenizer").mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_data / name, data / "tokenizer" / name)
    # as `hybridlm data prepare` writes it: the copy inside the dataset, and where it came from
    manifest = {"tokenizer": {"files": "tokenizer", "path": "/gone/tokenizer.json", "kind": "tokenizer.json"}}
    tok = dataset_tokenizer(data, manifest)
    assert tok is not None and tok.vocab_size == 320 and tok.decode(tok.encode("def f(x):")) == "def f(x):"
    assert dataset_tokenizer(tmp_path / "empty", {}) is None
    assert dataset_tokenizer(tiny_data, {"tokenizer": "tokenizer.json"}).vocab_size == 320
