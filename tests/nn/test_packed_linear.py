import pytest
import torch
from torch import nn

from hybridlm.models.decoder import Decoder
from hybridlm.nn.packed_linear import PackedLinear, pack_linears, packed_linear_available
from hybridlm.presets import get_preset

pytestmark = pytest.mark.skipif(not packed_linear_available(), reason="this torch build has no oneDNN")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 64), (3, 5, 64), (1, 1, 64)])
def test_packed_linear_matches_nn_linear(bias, shape):
    lin = nn.Linear(64, 96, bias=bias)
    x = torch.randn(*shape)
    with torch.inference_mode():
        torch.testing.assert_close(PackedLinear(lin)(x), lin(x), atol=1e-5, rtol=1e-5)


def test_packed_model_gives_the_reference_logits():
    torch.manual_seed(0)
    model = Decoder(get_preset("qwen3-tiny")).eval()  # tied embeddings: the head is packed separately
    ids = torch.randint(0, 1024, (2, 12))
    with torch.inference_mode():
        ref = model(ids)
        # 4 layers x (wqkv, wo, w_in, w_out) + the LM head
        assert pack_linears(model, "packed") == 4 * 4 + 1
    # every nn.Linear is gone and the logits are unchanged
    assert not any(type(m) is nn.Linear for m in model.modules())
    with torch.inference_mode():
        torch.testing.assert_close(model(ids), ref, atol=1e-5, rtol=1e-5)


def test_ref_keeps_nn_linear_and_packed_refuses_bf16():
    model = Decoder(get_preset("llama-tiny"))
    assert pack_linears(model, "ref") == 0
    assert any(type(m) is nn.Linear for m in model.modules())
    with pytest.raises(ValueError, match="float32"):
        pack_linears(model.to(torch.bfloat16), "packed")
    assert pack_linears(model, "auto") == 0


def test_choose_fastest_picks_the_faster_of_two_fake_candidates():
    import time

    from hybridlm.nn.packed_linear import choose_fastest

    calls = []

    def slow():
        calls.append("slow")
        time.sleep(0.004)

    def fast():
        calls.append("fast")
        time.sleep(0.001)

    seconds = choose_fastest({"slow": slow, "fast": fast}, rounds=5)
    assert min(seconds, key=seconds.get) == "fast" and seconds["slow"] > seconds["fast"]
    # one warm-up each, then the candidates take turns
    assert calls == ["slow", "fast"] + ["slow", "fast"] * 5


def test_auto_measures_on_the_models_layers_and_both_candidates_agree():
    import copy

    from hybridlm.nn.packed_linear import choose_linear_impl

    torch.manual_seed(0)
    model = Decoder(get_preset("llama-tiny")).eval()
    choice = choose_linear_impl(model, "auto", rounds=3)
    assert choice.impl in ("packed", "ref") and set(choice.seconds) == {"packed", "ref"}
    assert "layer shapes" in choice.reason
    packed = copy.deepcopy(model)
    assert pack_linears(packed, "packed") > 0 and pack_linears(model, "ref") == 0
    ids = torch.randint(0, model.config.vocab_size, (1, 9))
    with torch.inference_mode():
        torch.testing.assert_close(packed(ids), model(ids), atol=1e-5, rtol=1e-5)
    chosen = copy.deepcopy(model)
    assert (pack_linears(chosen, choice) > 0) == (choice.impl == "packed")
