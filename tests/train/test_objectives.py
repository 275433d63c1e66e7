"""MLM and seq2seq objectives in the one trainer: BERT's 80/10/10 masking, loss only on chosen
tokens, an encoder preset and a seq2seq task training, resuming and exporting through `train`."""

import pytest
import torch

from hybridlm.train.objectives import IGNORE, mask_tokens, masked_lm_loss
from hybridlm.train.synthetic import SyntheticTask, TaskError, held_out


def test_masking_proportions_on_a_large_sample():
    vocab, mask_id = 1000, 1000
    ids = torch.randint(0, vocab, (400, 500), generator=torch.Generator().manual_seed(0))
    inputs, labels = mask_tokens(ids, mask_id, vocab, generator=torch.Generator().manual_seed(1))
    chosen = labels != IGNORE
    n = ids.numel()
    assert abs(chosen.sum().item() / n - 0.15) < 0.003
    masked = (inputs == mask_id) & chosen
    changed = (inputs != ids) & (inputs != mask_id) & chosen
    kept = (inputs == ids) & chosen
    c = chosen.sum().item()
    assert abs(masked.sum().item() / c - 0.8) < 0.01
    assert abs(changed.sum().item() / c - 0.1 * (1 - 1 / vocab)) < 0.006  # a random draw may equal the original
    assert abs(kept.sum().item() / c - (0.1 + 0.1 / vocab)) < 0.006
    assert torch.equal(inputs[~chosen], ids[~chosen])  # unchosen tokens are untouched
    assert torch.equal(labels[chosen], ids[chosen])
    assert (inputs[changed] < vocab).all()  # random replacements come from the data vocabulary


def test_unchosen_tokens_carry_no_loss():
    ids = torch.randint(0, 50, (4, 40), generator=torch.Generator().manual_seed(2))
    _, labels = mask_tokens(ids, 50, 50, generator=torch.Generator().manual_seed(3))
    logits = torch.randn(4, 40, 51, requires_grad=True)
    loss = masked_lm_loss(logits, labels)
    loss.backward()
    chosen = labels != IGNORE
    assert logits.grad[~chosen].abs().max() == 0
    assert logits.grad[chosen].abs().sum(-1).min() > 0
    expected = torch.nn.functional.cross_entropy(logits[chosen], labels[chosen])
    torch.testing.assert_close(loss, expected)


def test_mlm_trains_resumes_exactly_and_exports_bert(tiny_data, tmp_path, small_config, train_losses):
    from hybridlm.checkpoints.hf_bert import load_bert
    from hybridlm.train import train

    cfg = small_config(tiny_data, tmp_path / "run", preset="bert-tiny", max_steps=6)
    result = train(cfg)
    losses = train_losses(tmp_path / "run")
    assert result.finished and result.exported == "bert" and result.val_loss is not None
    assert losses[6] < losses[1]
    model = load_bert(tmp_path / "run" / "model")
    assert model.config.mask_token_id == model.config.vocab_size - 1  # one id after the data's vocabulary
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path / "run" / "model").eval()
    ids = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
    # stopped at step 3 and resumed: the same losses as the uninterrupted run (masks included)
    train(small_config(tiny_data, tmp_path / "split", preset="bert-tiny", max_steps=6, stop_at_step=3))
    train(small_config(tiny_data, tmp_path / "split", preset="bert-tiny", max_steps=6, resume=True))
    assert train_losses(tmp_path / "split") == losses


def test_seq2seq_task_trains_and_exports_t5(tmp_path, small_config, train_losses):
    from hybridlm.checkpoints.hf_t5 import load_t5
    from hybridlm.train import train

    cfg = small_config("task:reverse:4-6", tmp_path / "run", preset="t5-tiny", max_steps=8, seq_len=7,
                       micro_batch_size=8, global_batch_size=8, model_overrides=dict(d_model=64, n_heads=2, d_ff=128))
    result = train(cfg)
    losses = train_losses(tmp_path / "run")
    assert result.finished and result.exported == "t5" and losses[8] < losses[1]
    model = load_t5(tmp_path / "run" / "model")
    from hybridlm.tokenizer import Tokenizer

    tok = Tokenizer.from_file(tmp_path / "run" / "model")
    assert tok.encode("3 1 4") == [5, 3, 6] and tok.decode([5, 3, 6]) == "314"
    assert model.config.vocab_size == 12


def test_synthetic_splits_are_disjoint_and_deterministic():
    train, val = SyntheticTask("task:sort:4-8", "train"), SyntheticTask("task:sort:4-8", "val")
    assert train.example(5) == SyntheticTask("task:sort:4-8", "train").example(5)
    seen = {tuple(train.example(i)[0]) for i in range(2000)}
    assert not seen & {tuple(val.example(i)[0]) for i in range(300)}
    src, tgt = val.example(0)
    assert held_out([t - 2 for t in src[:-1]]) and tgt[:-1] == sorted(src[:-1]) and tgt[-1] == 1
    with pytest.raises(TaskError, match="unknown task"):
        SyntheticTask("task:translate", "train")
    with pytest.raises(TaskError, match="MIN-MAX"):
        SyntheticTask("task:reverse:x", "train")


def test_data_must_suit_the_model_family(tiny_data, tmp_path, small_config):
    from hybridlm.train import train
    from hybridlm.train.config import TrainConfigError

    with pytest.raises(TrainConfigError, match="seq2seq preset"):
        train(small_config("task:reverse", tmp_path / "a", preset="gpt2-tiny"))
    with pytest.raises(TrainConfigError, match="task:reverse or task:sort"):
        train(small_config(tiny_data, tmp_path / "b", preset="t5-tiny"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
