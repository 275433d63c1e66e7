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
