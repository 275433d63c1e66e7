"""VLM checkpoints: the vision parts save and load with the LM, written atomically, loaded without pickle."""

import json

import pytest
import torch

from hybridlm.checkpoints.errors import CheckpointError
from hybridlm.checkpoints.registry import describe_source, load_model
from hybridlm.checkpoints.vlm import load_vlm, save_vlm
from hybridlm.multimodal import shapes
from tests.multimodal.helpers import prompt, tiny_vlm


@pytest.mark.parametrize("design", ["flamingo", "tokens"])
@pytest.mark.parametrize("kind", ["transformer", "hybrid"])
def test_save_then_load_gives_the_same_logits(tmp_path, design, kind):
    model = tiny_vlm(kind, design, seed=1, image_token_id=shapes.IMAGE)
    out = save_vlm(model, shapes.tokenizer(), tmp_path / "vlm")
    loaded, tok = load_vlm(out)
    ids = prompt(loaded.vision_config, [5, None, 6, 7])
    image = [torch.randn(1, 3, 16, 16)]
    with torch.no_grad():
        assert torch.equal(loaded(ids, image), model(ids, image))
    assert loaded.vision_config == model.vision_config and loaded.config == model.config
    assert tok.token_to_id("<image>") == shapes.IMAGE
    via_registry = load_model(out)
    assert via_registry.format == "vlm" and hasattr(via_registry.model, "vision_config")
    assert describe_source(out)[0] == model.config
    names = set(loaded.state_dict())
    assert any(n.startswith("vision.") for n in names)
    assert any(n.startswith("xattn." if design == "flamingo" else "projector.") for n in names)


def test_saving_is_atomic_and_refuses_to_overwrite(tmp_path):
    model = tiny_vlm("transformer", "tokens", image_token_id=shapes.IMAGE)
    out = save_vlm(model, shapes.tokenizer(), tmp_path / "vlm")
    with pytest.raises(FileExistsError):
        save_vlm(model, shapes.tokenizer(), out)
    before = sorted(p.name for p in tmp_path.iterdir())

    class Broken(Exception):
        pass

    def fail(*args, **kwargs):
        raise Broken

    tok = shapes.tokenizer()
    tok.to_hf_files = fail
    with pytest.raises(Broken):
        save_vlm(model, tok, tmp_path / "other")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no half-written directory left


def test_a_checkpoint_whose_weights_do_not_match_is_refused(tmp_path):
    model = tiny_vlm("transformer", "flamingo", image_token_id=shapes.IMAGE)
    out = save_vlm(model, shapes.tokenizer(), tmp_path / "vlm")
    meta = json.loads((out / "vlm.json").read_text())
    meta["vision"]["design"] = "tokens"  # a projector where xattn weights are stored
    (out / "vlm.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not match"):
        load_vlm(out)
