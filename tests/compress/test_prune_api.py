"""prune_model's checks, recovery fine-tuning through the trainer, and saving/loading pruned models."""

import json

import pytest
import torch

from hybridlm.checkpoints.registry import load_model
from hybridlm.compress import QuantizeConfig, quantize_model
from hybridlm.compress.prune import PruneConfig, PruneError, prune_model, resolve_prune_config, save_pruned
from hybridlm.compress.prune.importance import prunable_linears
from hybridlm.compress.prune.recovery import mean_loss
from hybridlm.compress.prune.sparsity24 import follows_n_m
from hybridlm.tokenizer import Tokenizer
from tests.compress.prune_helpers import calibration, ids, tiny


@pytest.mark.parametrize("cfg, message", [
    (PruneConfig("magnitude", amount=0.0), "strictly between 0 and 1"),
    (PruneConfig("magnitude", amount=1.0), "strictly between 0 and 1"),
    (PruneConfig("channels", amount=-0.2), "strictly between 0 and 1"),
    (PruneConfig("channels"), "--amount is required"),
    (PruneConfig("2:4", amount=0.3), "exactly half"),
    (PruneConfig("neurons", amount=0.5), "unknown pruning method 'neurons'"),
    (PruneConfig("channels", amount=0.5, scope="global"), "--scope global applies to magnitude"),
    (PruneConfig("layers", amount=0.5, importance="weight"), "--importance activation"),
    (PruneConfig("magnitude", amount=0.5, importance="fisher"), "--importance must be one of"),
    (PruneConfig("channels", amount=0.5, head_unit="group"), "--head-unit applies to --method heads"),
])
def test_bad_requests_are_refused_before_anything_happens(cfg, message):
    with pytest.raises(PruneError, match=message):
        resolve_prune_config(cfg)


@pytest.mark.parametrize("cfg, overrides, message", [
    (PruneConfig("heads", amount=0.9), {}, "would remove all 3 query heads per KV group"),
    (PruneConfig("heads", amount=0.1), {}, "removes no query heads per KV group"),
    (PruneConfig("heads", amount=0.5, head_unit="query"), dict(n_kv_heads=6), "MHA.*--head-unit group"),
    (PruneConfig("heads", amount=0.5, head_unit="group"), dict(n_kv_heads=1), "would remove all 1 KV groups"),
    (PruneConfig("layers", amount=0.8), {}, "would remove all 2 layers"),
    (PruneConfig("channels", amount=0.999), {}, "would remove all 96 MLP channels"),
    (PruneConfig("heads", amount=0.5), dict(position="alibi"), "ALiBi"),
])
def test_pruning_that_would_leave_nothing_is_refused(cfg, overrides, message):
    model = tiny(**overrides)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PruneError, match=message):
        prune_model(model, cfg, calibration())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_quantized_models_and_missing_calibration_are_refused():
    model = tiny()
    with pytest.raises(PruneError, match="need calibration data"):
        prune_model(model, PruneConfig("channels", amount=0.5))
    quantize_model(model, QuantizeConfig("rtn", bits=8))
    with pytest.raises(PruneError, match="quantized.*prune the float model"):
        prune_model(model, PruneConfig("magnitude", amount=0.5))


def test_recovery_reduces_the_loss_and_keeps_the_masks():
    model, calib = tiny(), calibration(n=8)
    _, summary = prune_model(model, PruneConfig("2:4", recover_steps=12, recover_lr=3e-3), calib)
    r = summary.recovery
    assert r.steps == 12 and r.loss_after < r.loss_before
    assert r.loss_after == pytest.approx(mean_loss(model, calib))
    for name, linear in prunable_linears(model).items():  # the pattern survived the optimizer
        assert follows_n_m(linear.weight, 2, 4), name
    assert summary.sparsity == pytest.approx(0.5)


@pytest.mark.slow
def test_recovery_of_a_shrunk_model_goes_through_the_trainer():
    model, calib = tiny(), calibration(n=8)
    pruned, summary = prune_model(model, PruneConfig("channels", amount=0.5, recover_steps=10, recover_lr=3e-3), calib)
    assert pruned.config.d_ff == 48
    assert summary.recovery.loss_after < summary.recovery.loss_before


@pytest.fixture(scope="module")
def tokenizer(pydoc_text):
    return Tokenizer.train_bpe([pydoc_text[:30_000]], vocab_size=300)


@pytest.mark.parametrize("cfg", [PruneConfig("heads", amount=0.34), PruneConfig("magnitude", amount=0.5),
                                 PruneConfig("layers", amount=0.5)])
def test_pruned_models_save_and_load_anywhere_a_model_is_accepted(tmp_path, tokenizer, cfg):
    model = tiny(tie_embeddings=True)
    pruned, summary = prune_model(model, cfg, calibration())
    save_pruned(pruned, tokenizer, tmp_path / "p", summary)
    loaded = load_model(tmp_path / "p")
    assert loaded.format == "hf" and loaded.model.config == pruned.config
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids()), pruned(ids()), rtol=0, atol=0)
    record = json.loads((tmp_path / "p" / "pruning.json").read_text())
    assert record["config"]["method"] == cfg.method and record["params_after"] == summary.params_after
    assert loaded.tokenizer.encode("x = 1") == tokenizer.encode("x = 1")


def test_save_refuses_a_non_empty_directory(tmp_path, tokenizer):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "keep").write_text("mine")
    with pytest.raises(Exception, match="not empty"):
        save_pruned(tiny(), tokenizer, tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["keep"]
