"""PEFT parity: an adapter hybridlm trains loads into `peft` over `transformers` with the same logits,
and one `peft` makes loads into hybridlm with the same logits (1e-4, float32)."""

import json

import pytest
import torch

peft = pytest.importorskip("peft", reason="peft is in the test extra")  # noqa: E402
transformers = pytest.importorskip("transformers")

from hybridlm.checkpoints.hf import load_hf_checkpoint  # noqa: E402
from hybridlm.finetune.lora import LoraConfig, LoraError, apply_lora  # noqa: E402
from hybridlm.finetune.peft_format import CONFIG_FILE, WEIGHTS_FILE, load_adapter, save_adapter  # noqa: E402
from hybridlm.presets import get_preset  # noqa: E402
from hybridlm.models.decoder import Decoder  # noqa: E402

VOCAB = 160
ALL = ("q", "k", "v", "o", "gate", "up", "down")


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory):
    """A tiny random LlamaForCausalLM saved as an HF directory -> (path, the model's state dict)."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   bos_token_id=1, eos_token_id=2)
    model = transformers.LlamaForCausalLM(cfg).float().eval()
    path = tmp_path_factory.mktemp("hf-llama")
    model.save_pretrained(path)
    return path


def _hf(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path).float().eval()


def _ids():
    return torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("rslora", [False, True])
def test_ours_loads_into_peft(hf_llama, tmp_path, rslora):
    ours = load_hf_checkpoint(hf_llama).eval()
    lcfg = LoraConfig(r=4, alpha=12, targets=ALL, rslora=rslora)
    apply_lora(ours, lcfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.2)
    save_adapter(ours, lcfg, tmp_path / "adapter", base=str(hf_llama))
    config = json.loads((tmp_path / "adapter" / CONFIG_FILE).read_text())
    assert sorted(config["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                       "up_proj", "down_proj"])
    hf = peft.PeftModel.from_pretrained(_hf(hf_llama), tmp_path / "adapter").eval()
    with torch.no_grad():
        expected = hf(_ids()).logits
        torch.testing.assert_close(ours(_ids()), expected, atol=1e-4, rtol=0)
        with hf.disable_adapter():
            assert (hf(_ids()).logits - expected).abs().max() > 1e-3  # the adapter did something


def test_peft_loads_into_ours(hf_llama, tmp_path):
    torch.manual_seed(2)
    pcfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj", "up_proj"],
                           init_lora_weights=False, task_type="CAUSAL_LM")
    hf = peft.get_peft_model(_hf(hf_llama), pcfg).eval()
    hf.save_pretrained(tmp_path / "adapter")
    ours = load_hf_checkpoint(hf_llama).eval()
    lcfg = load_adapter(ours, tmp_path / "adapter")
    assert lcfg.targets == ("q", "v", "up", "down") and lcfg.r == 4 and lcfg.alpha == 8
    with torch.no_grad():
        torch.testing.assert_close(ours(_ids()), hf(_ids()).logits, atol=1e-4, rtol=0)


def test_mismatched_base_is_refused_and_model_untouched(hf_llama, tmp_path):
    ours = load_hf_checkpoint(hf_llama).eval()
    lcfg = LoraConfig(r=2)
    apply_lora(ours, lcfg)
    save_adapter(ours, lcfg, tmp_path / "adapter")
    other = Decoder(get_preset("llama-tiny", vocab_size=VOCAB))  # d_model 128, not 64
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(LoraError, match="different base model"):
        load_adapter(other, tmp_path / "adapter")
    assert other.state_dict().keys() == before.keys()
    with pytest.raises(LoraError, match="not a PEFT adapter"):
        load_adapter(other, tmp_path)
    (tmp_path / "adapter" / WEIGHTS_FILE).write_bytes(b"garbage")
    with pytest.raises(LoraError, match="unreadable"):
        load_adapter(other, tmp_path / "adapter")
