"""CLIP-style pre-training of the image encoder: the loss against its definition, and the trainer
running it on image-caption pairs (task:shapes-captions)."""

import math

import pytest
import torch

from hybridlm.config import ModelConfig
from hybridlm.multimodal import shapes
from hybridlm.multimodal.clip import ClipModel
from hybridlm.multimodal.config import VisionConfig
from hybridlm.train import TrainConfig, train
from hybridlm.train.config import TrainConfigError
from hybridlm.train.objectives import clip_loss


def test_clip_loss_is_the_mean_of_both_cross_entropies_written_out():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    scale = torch.tensor(math.log(10.0))
    sims = 10.0 * img @ txt.T
    i2t = -sum(sims[i, i] - torch.logsumexp(sims[i], 0) for i in range(5)) / 5
    t2i = -sum(sims[i, i] - torch.logsumexp(sims[:, i], 0) for i in range(5)) / 5
    torch.testing.assert_close(clip_loss(img, txt, scale), (i2t + t2i) / 2)
    torch.testing.assert_close(clip_loss(img, txt, scale, reduction="sum"), 5 * (i2t + t2i) / 2)
    assert clip_loss(img, img, torch.tensor(math.log(100.0))) < 0.05  # matched pairs: near zero


def _clip_model():
    torch.manual_seed(0)
    text = ModelConfig(vocab_size=len(shapes.WORDS), d_model=32, n_heads=2, d_ff=64, n_layers=1, max_seq_len=16,
                       position="learned", family="encoder", mlp="gelu", norm="layernorm")
    return ClipModel(text, VisionConfig(patch_size=16, d_vision=32, n_layers=1, n_heads=2, d_ff=64,
                                        mean=(0.5,) * 3, std=(0.5,) * 3), d_embed=32)


@pytest.mark.usefixtures("one_thread")
def test_the_trainer_pre_trains_a_clip_model_on_captions(tmp_path):
    model = _clip_model()
    cfg = TrainConfig(preset="bert-tiny", data_dir="task:shapes-captions", out_dir=str(tmp_path / "run"), max_steps=25,
                      seq_len=shapes.ShapesCaptions.MAX_WORDS, micro_batch_size=32, lr=3e-3, warmup_steps=5,
                      weight_decay=0.0, eval_every=0, eval_sequences=32, save_every=0, export_hf=False, plot=False,
                      precision="fp32", device="cpu", peak_flops=1e12, progress=False)
    result = train(cfg, model=model)
    assert result.finished and result.val_loss is not None
    assert result.val_loss < math.log(32) - 1.0  # chance is ln(batch): the pairs are being told apart
    with pytest.raises(TrainConfigError, match="CLIP-style"):
        train(TrainConfig(preset="bert-tiny", data_dir="task:shapes-captions", out_dir=str(tmp_path / "r2"),
                          export_hf=False, device="cpu"))
