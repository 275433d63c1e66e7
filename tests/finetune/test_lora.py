import pytest
import torch

from hybridlm.finetune.lora import LoraConfig, LoraError, adapter_state_dict, apply_lora, merge_lora, strip_lora, \
    target_slices, unmerge_lora
from hybridlm.models.decoder import Decoder
from hybridlm.nn.lora import LoRALinear, adapters_disabled
from hybridlm.presets import get_preset


def _model(preset="llama-tiny", **kw):
    torch.manual_seed(0)
    return Decoder(get_preset(preset, **kw)).eval()


def _randomise_adapters(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.1)


def test_fresh_adapter_changes_nothing_and_only_adapters_train():
    model = _model()
    ids = torch.randint(0, 1024, (2, 12))
    before = model(ids)
    wrapped = apply_lora(model, LoraConfig(r=4, alpha=8))
    assert set(wrapped) == {f"blocks.{i}.mixer.{n}" for i in range(0, len(model.blocks), 2) for n in ("wqkv", "wo")}
    torch.testing.assert_close(model(ids), before)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    model(ids).sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if ".lora_" not in n)


def test_slices_update_only_their_rows():
    model = _model()
    apply_lora(model, LoraConfig(r=2, targets=("k",)))
    wqkv = model.blocks[0].mixer.wqkv
    _randomise_adapters(model)
    x = torch.randn(3, wqkv.in_features)
    delta = wqkv(x) - wqkv.base(x)
    cfg = model.config
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    assert delta[:, :q].abs().max() == 0 and delta[:, q + kv:].abs().max() == 0
    assert delta[:, q:q + kv].abs().max() > 0


@pytest.mark.parametrize("rslora", [False, True])
def test_merge_equals_adapter_forward_and_unmerge_restores(rslora):
    model = _model()
    base_weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_lora(model, LoraConfig(r=4, alpha=32, targets=("q", "k", "v", "o", "gate", "up", "down"), rslora=rslora))
    _randomise_adapters(model)
    ids = torch.randint(0, 1024, (2, 16))
    with torch.no_grad():
        adapted = model(ids)
        merge_lora(model)
        torch.testing.assert_close(model(ids), adapted, atol=1e-5, rtol=1e-5)
        unmerge_lora(model)
    for name, p in model.named_parameters():
        if ".lora_" not in name:
            original = base_weights[name.replace(".base.", ".")]
            torch.testing.assert_close(p, original, atol=1e-6, rtol=0)
    with torch.no_grad():
        with adapters_disabled(model):
            plain = model(ids)
        torch.testing.assert_close(strip_lora(model)(ids), adapted, atol=1e-5, rtol=1e-5)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert not torch.allclose(plain, adapted)


def test_rslora_scaling():
    model = _model()
    a = apply_lora(model, LoraConfig(r=16, alpha=8, rslora=True))
    assert next(iter(a.values())).scaling == pytest.approx(8 / 4)


def test_hybrid_targets_and_errors():
    model = _model("nemotron-h-tiny")
    wrapped = apply_lora(model, LoraConfig(targets=("in_proj", "out_proj", "q", "up", "down")))
    kinds = model.config.blocks
    assert {n.split(".")[1] for n in wrapped} == {str(i) for i, k in enumerate(kinds) if k != "moe"}
    assert len(adapter_state_dict(model)) == 2 * sum(len(m.slices) for m in wrapped.values())
    with pytest.raises(LoraError, match="gate.*name no layer"):
        target_slices(model.config, ("gate",))  # a plain (non-GLU) MLP has no gate
    with pytest.raises(LoraError, match="unknown LoRA target"):
        LoraConfig(targets=("wq",))
    with pytest.raises(LoraError, match="in_proj.*name no layer"):
        apply_lora(_model(), LoraConfig(targets=("in_proj",)))


def test_quantized_base_trains_adapter_but_refuses_merge():
    from hybridlm.compress import QuantizeConfig, quantize_model

    model = _model()
    quantize_model(model, QuantizeConfig(method="nf4", group_size=32))
    apply_lora(model, LoraConfig(r=2))
    ids = torch.randint(0, 1024, (1, 8))
    model(ids).float().pow(2).mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if ".lora_A." in n]
    assert grads and all(g is not None for g in grads)
    with pytest.raises(ValueError, match="cannot absorb"):
        merge_lora(model)
