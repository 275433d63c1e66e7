"""Sliding-window perplexity: the window plan scores every token once, and the number equals the one
transformers gives on the same model and ids (float32, 1e-4 relative)."""

import math

import pytest
import torch
import transformers

from hybridlm.checkpoints.hf import load_hf_checkpoint
from hybridlm.checkpoints.registry import load_model
from hybridlm.eval.perplexity import perplexity, text_perplexity, window_plan

VOCAB = 160


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny random Llama in transformers and the same weights loaded by hybridlm."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
    hf = transformers.LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # away from the init, so logits are not near-uniform
    path = tmp_path_factory.mktemp("llama")
    hf.save_pretrained(path)
    return hf, load_hf_checkpoint(path, torch.float32).eval()


def transformers_perplexity(model, ids: torch.Tensor, window: int, stride: int) -> float:
    """The loop of the transformers documentation ("Perplexity of fixed-length models"): labels
    masked with -100 outside each window's new tokens, the model's own shifted loss; each window's
    mean loss weighted by the number of labels it actually scored."""
    nll, count, prev_end = 0.0, 0, 0
    n = ids.shape[1]
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target = input_ids.clone()
        target[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target).loss
        scored = int((target[:, 1:] != -100).sum())  # the loss shifts labels by one
        nll += loss.item() * scored
        count += scored
        prev_end = end
        if end == n:
            break
    return math.exp(nll / count)


@pytest.mark.parametrize("window, stride", [(64, 32), (64, 64), (50, 17), (200, 100), (300, 300)])
def test_equals_transformers(pair, window, stride):
    hf, ours = pair
    ids = torch.randint(0, VOCAB, (1, 200), generator=torch.Generator().manual_seed(1))
    expected = transformers_perplexity(hf, ids, window, stride)
    got = perplexity(ours, ids[0], window=window, stride=stride)
    assert got.perplexity == pytest.approx(expected, rel=1e-4)
    assert got.nll / got.tokens == pytest.approx(math.log(got.perplexity))


def test_batched_windows_give_the_same_number(pair):
    _, ours = pair
    ids = torch.randint(0, VOCAB, (203,), generator=torch.Generator().manual_seed(2))
    one = perplexity(ours, ids, window=40, stride=20)
    many = perplexity(ours, ids, window=40, stride=20, batch_size=4)
    assert many.perplexity == pytest.approx(one.perplexity, rel=1e-6) and many.tokens == one.tokens


@pytest.mark.parametrize("n, window, stride", [(100, 10, 3), (100, 10, 10), (7, 10, 5), (1000, 256, 128), (33, 2, 1)])
def test_window_plan_scores_every_token_but_the_first_once(n, window, stride):
    plan = window_plan(n, window, stride)
    scored = [t for _, end, first in plan for t in range(first, end)]
    if stride < window:
        assert scored == list(range(1, n))
    else:  # non-overlapping windows: a window's first token has no context and is not scored
        assert sorted(scored) == sorted(set(scored)) and set(scored) <= set(range(1, n))
    for begin, end, first in plan:
        assert end - begin <= window and begin < first < end + 1


def test_bits_per_byte_and_text_entry(pair):
    _, ours = pair

    class Bytes:  # a byte-level tokenizer stand-in within the tiny vocabulary
        def encode(self, text):
            return [b % VOCAB for b in text.encode()]

        def decode(self, ids, skip_special_tokens=False):
            return bytes(ids).decode("latin-1")

    text = "the quick brown fox jumps over the lazy dog " * 4
    r = text_perplexity(ours, Bytes(), text, window=64, stride=32)
    assert r.bits_per_byte == pytest.approx(r.nll / math.log(2) / len(text.encode()))
    assert r.tokens == len(text) - 1


def test_errors(pair):
    _, ours = pair
    with pytest.raises(ValueError, match="at least 2 tokens"):
        perplexity(ours, [5], window=8)
    with pytest.raises(ValueError, match="longer than the model's context"):
        perplexity(ours, list(range(300)), window=4096)
    with pytest.raises(ValueError, match="stride"):
        perplexity(ours, list(range(10)), window=8, stride=9)


@pytest.mark.slow  # loads SmolLM2 twice (ours and transformers' GGUF reader), ~1 min
def test_smollm2_on_the_heldout_slice_equals_transformers(smollm2_gguf):
    from hybridlm.compress.calibration import heldout_text

    lm = load_model("smollm2-135m")
    hf = transformers.AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name,
                                                           dtype=torch.float32).eval()
    ids = lm.tokenizer.encode(heldout_text())[:1024]
    expected = transformers_perplexity(hf, torch.tensor([ids]), window=256, stride=128)
    got = perplexity(lm.model, ids, window=256, stride=128)
    assert got.perplexity == pytest.approx(expected, rel=1e-4)


def test_trainer_validation_is_the_sliding_window_scorer_with_stride_seq_len(pair):
    """The trainer's causal validation (windows of seq_len + 1 tokens, train/data.validation_batches,
    scored by train/objectives.CausalLM.eval_sums) is this scorer with window = seq_len + 1 and
    stride = seq_len: the same tokens scored, the same NLL. (The trainer keeps its own loop because it
    also validates MLM and seq2seq objectives across ranks; this test keeps the two definitions one.)"""
    from hybridlm.train.objectives import CausalLM

    _, ours = pair
    seq_len, n = 32, 5
    ids = torch.randint(0, VOCAB, (n * seq_len + 1,), generator=torch.Generator().manual_seed(4))
    batch = torch.stack([ids[j * seq_len:j * seq_len + seq_len + 1] for j in range(n)])
    total, count = CausalLM().eval_sums(ours, batch)
    got = perplexity(ours, ids, window=seq_len + 1, stride=seq_len)
    assert got.tokens == count and got.nll == pytest.approx(total, rel=1e-5)
