"""Images in: Pillow reads, resizes and normalises; bad files are clear errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from hybridlm.multimodal.config import VisionConfig
from hybridlm.multimodal.image import load_features, load_image, load_visual


def test_a_solid_colour_normalises_to_the_expected_values(tmp_path):
    cfg = VisionConfig(image_size=16, patch_size=8)
    Image.new("RGB", (40, 24), (255, 128, 0)).save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png", cfg)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    expected = (torch.tensor([255, 128, 0]) / 255.0 - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
    torch.testing.assert_close(x[:, 5, 7], expected, rtol=1e-5, atol=1e-5)


def test_resize_matches_pillow_bicubic_and_grey_becomes_rgb(tmp_path):
    cfg = VisionConfig(image_size=16, patch_size=8, mean=(0.0,) * 3, std=(1.0,) * 3)
    rng = np.random.default_rng(0)
    grey = Image.fromarray(rng.integers(0, 256, (37, 29), dtype=np.uint8), mode="L")
    grey.save(tmp_path / "g.png")
    x = load_image(tmp_path / "g.png", cfg)
    want = np.asarray(grey.convert("RGB").resize((16, 16), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    torch.testing.assert_close(x, torch.from_numpy(want).permute(2, 0, 1))


def test_unreadable_and_missing_images_are_clear_errors(tmp_path):
    cfg = VisionConfig()
    (tmp_path / "bad.png").write_bytes(b"this is not a picture")
    with pytest.raises(ValueError, match="cannot read .*bad.png as an image"):
        load_image(tmp_path / "bad.png", cfg)
    with pytest.raises(FileNotFoundError, match="no image file"):
        load_image(tmp_path / "missing.png", cfg)


def test_precomputed_features_from_safetensors(tmp_path):
    from safetensors.torch import save_file

    cfg = VisionConfig(d_vision=32, n_heads=2)
    feats = torch.randn(16, 32)
    save_file({"features": feats}, str(tmp_path / "f.safetensors"))
    assert torch.equal(load_visual(tmp_path / "f.safetensors", cfg), feats)
    save_file({"features": torch.randn(16, 31)}, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ValueError, match=r"shape \(P, 32\)"):
        load_features(tmp_path / "wrong.safetensors", cfg)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 12)
    with pytest.raises(ValueError, match="cannot read"):
        load_features(tmp_path / "junk.safetensors", cfg)
