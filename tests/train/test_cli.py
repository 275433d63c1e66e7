"""`hybridlm train` as users run it: options from TrainConfig, one-line errors, a JSON summary."""

import json

from hybridlm.cli import build_parser, main


def test_every_train_config_field_is_an_option_with_help():
    import dataclasses

    from hybridlm.train import TrainConfig

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    options = {a.dest: a for a in sub._actions}
    for f in dataclasses.fields(TrainConfig):
        assert f.name in options, f.name
        assert options[f.name].help, f.name
    assert "torchrun" in sub.description


def test_unknown_preset_is_one_line(capsys, tiny_data, tmp_path):
    code = main(["train", "--preset", "nope", "--data", str(tiny_data), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("hybridlm: error:") and "gpt2-tiny" in err[0]


def test_cli_run_prints_a_summary(capsys, tiny_data, tmp_path):
    code = main(["train", "--preset", "llama-tiny", "--data", str(tiny_data), "--out", str(tmp_path / "r"),
                 "--set", "d_model=64", "--set", "n_layers=1", "--set", "n_heads=2", "--set", "n_kv_heads=1",
                 "--max-steps", "2", "--seq-len", "16", "--micro-batch-size", "2", "--eval-every", "0",
                 "--no-progress", "--no-plot", "--no-export-hf", "--peak-flops", "1e11", "--json"])
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert code == 0 and summary["step"] == 2 and summary["finished"] and summary["val_loss"] > 0
    assert "val loss" in err and (tmp_path / "r" / "log.jsonl").is_file()


def test_a_config_without_an_hf_equivalent_says_why_there_is_no_export(capsys, tiny_data, tmp_path):
    code = main(["train", "--preset", "llama-tiny", "--data", str(tiny_data), "--out", str(tmp_path / "r"),
                 "--set", "d_model=32", "--set", "n_layers=1", "--set", "n_heads=2", "--set", "n_kv_heads=1",
                 "--set", "position=alibi", "--max-steps", "1", "--seq-len", "16", "--micro-batch-size", "2",
                 "--eval-every", "0", "--no-progress", "--no-plot", "--peak-flops", "1e11"])
    err = capsys.readouterr().err
    assert code == 0 and "no HF export" in err and not (tmp_path / "r" / "model").exists()
