"""Fixtures the evaluation tests share: a tiny random Llama saved as an HF directory with a small
BPE tokenizer (what transformers, lm-eval's HF backend and our registry all load), and small
self-made task files."""

import pytest
import torch
import transformers

from hybridlm.tokenizer import Tokenizer
from tests.eval.eval_helpers import corpus_lines, write_mc

@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory):
    """An HF directory: random LlamaForCausalLM (2 layers, width 64) + tokenizer.json (BPE, 320 ids)."""
    out = tmp_path_factory.mktemp("tiny-llama")
    tok = Tokenizer.train_bpe(corpus_lines(), vocab_size=320, special_tokens=("<|endoftext|>",))
    tok = Tokenizer(tok.backend, eos_token="<|endoftext|>")
    tok.to_hf_files(out)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=512, rms_norm_eps=1e-5,
                                   eos_token_id=tok.eos_token_ids[0], bos_token_id=None, tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.2)  # away from the init, so choices get distinct scores
    hf.save_pretrained(out)
    return out


@pytest.fixture
def mc_file(tmp_path):
    path = tmp_path / "mc.jsonl"
    write_mc(path)
    return path
