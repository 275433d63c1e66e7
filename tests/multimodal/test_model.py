"""The two designs on both decoder kinds: gates at zero leave the LM untouched bit for bit,
cached generation equals the full forward, per-image masking, and the visual tokens' placement."""

import pytest
import torch

from hybridlm.generation.sampling import SamplingConfig
from hybridlm.multimodal.prompt import generate_with_images
from hybridlm.nn.attention import Attention
from tests.multimodal.helpers import DECODERS, IMAGE_ID, prompt, tiny_vlm

pytestmark = pytest.mark.usefixtures("one_thread")
KINDS = list(DECODERS)


@pytest.mark.parametrize("kind", KINDS)
def test_flamingo_with_gates_at_zero_is_the_text_only_model_bit_for_bit(kind):
    model = tiny_vlm(kind, "flamingo", open_gates=False)  # as built: every gate 0
    ids = prompt(model.vision_config, [5, 6, None, 7, 8, None, 9, 10, 11])
    images = [torch.randn(2, 3, 16, 16)]
    with torch.no_grad():
        text_only = model.decoder(ids)
        assert torch.equal(model(ids, images), text_only)
        model.xattn[0].alpha_attn.data.fill_(1e-3)  # the control: a gate barely open changes the logits
        assert not torch.equal(model(ids, images), text_only)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("design", ["flamingo", "tokens"])
def test_cached_forward_in_chunks_equals_the_full_forward(kind, design):
    model = tiny_vlm(kind, design)
    ids = prompt(model.vision_config, [5, 6, None, 7, 8, None, 9, 10, 11, 12])
    images = [torch.randn(2, 3, 16, 16)]
    with torch.no_grad():
        full = model(ids, images)
        bound = model.bind_images(images)
        cache = bound.new_cache(1)
        cut = 4  # the prefill ends inside the first image's placeholders (tokens) or just after it
        pieces = [model(ids[:, :cut], bound.visual, cache)]
        pieces += [model(ids[:, t:t + 1], bound.visual, cache) for t in range(cut, ids.shape[1])]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    assert int(cache.placeholders_seen) == 2 * model.vision_config.tokens_per_image


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("design", ["flamingo", "tokens"])
def test_generation_with_images_equals_greedy_over_full_forwards(kind, design):
    model = tiny_vlm(kind, design)
    images = [torch.randn(1, 3, 16, 16), torch.randn(2, 3, 16, 16)]
    prompts = [[5, IMAGE_ID, 6, 7], [IMAGE_ID, 8, IMAGE_ID, 9, 10, 11]]  # different lengths: left padding
    out = generate_with_images(model, prompts, images, SamplingConfig(max_new_tokens=6, temperature=0.0,
                                                                        ignore_eos=True)).tokens
    from hybridlm.multimodal.prompt import expand_placeholders

    for row, (p, imgs) in enumerate(zip(prompts, images)):
        ids = expand_placeholders(p, model.vision_config)
        for _ in range(6):  # greedy by hand: a full forward over everything so far
            with torch.no_grad():
                logits = model(torch.tensor([ids]), [imgs])[0, -1]
            logits[IMAGE_ID] = float("-inf")
            ids.append(int(logits.argmax()))
        assert out[row] == ids[-6:]


@pytest.mark.parametrize("kind", KINDS)
def test_flamingo_text_reads_only_the_images_before_it(kind):
    model = tiny_vlm(kind, "flamingo")
    ids = prompt(model.vision_config, [5, 6, None, 7, 8, None, 9, 10])
    second = int((ids[0] == IMAGE_ID).nonzero()[1])  # column of the second image's placeholder
    a, b = torch.randn(1, 3, 16, 16), torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        base = model(ids, [torch.cat((a, b))])
        other_second = model(ids, [torch.cat((a, torch.randn(1, 3, 16, 16)))])
        other_first = model(ids, [torch.cat((torch.randn(1, 3, 16, 16), b))])
    assert torch.equal(base[:, :second], other_second[:, :second])  # before its placeholder: unseen
    assert not torch.allclose(base[:, second:], other_second[:, second:])
    first = int((ids[0] == IMAGE_ID).nonzero()[0])
    assert torch.equal(base[:, :first], other_first[:, :first])  # text before any image reads nothing
    assert not torch.allclose(base[:, -1], other_first[:, -1])  # "preceding": the last token reads both


def test_flamingo_last_image_only_mode():
    model = tiny_vlm("transformer", "flamingo", xattn_images="last")
    ids = prompt(model.vision_config, [5, None, 7, None, 9, 10])
    second = int((ids[0] == IMAGE_ID).nonzero()[1])
    a, b = torch.randn(1, 3, 16, 16), torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        base = model(ids, [torch.cat((a, b))])
        other_first = model(ids, [torch.cat((torch.randn(1, 3, 16, 16), b))])
    # after the second placeholder nothing reads the first image (the self-attention carries only
    # what earlier tokens read, so compare the second placeholder's own column's cross-attention input)
    assert not torch.equal(base[:, :second], other_first[:, :second])
    model.decoder.blocks[0].mixer.wqkv.weight.data.zero_()  # attention mixes nothing: each column alone
    model.decoder.blocks[2].mixer.wqkv.weight.data.zero_()
    with torch.no_grad():
        base = model(ids, [torch.cat((a, b))])
        other_first = model(ids, [torch.cat((torch.randn(1, 3, 16, 16), b))])
    assert torch.equal(base[:, second:], other_first[:, second:])


@pytest.mark.parametrize("kind", KINDS)
def test_tokens_design_puts_projected_features_at_the_placeholders(kind):
    model = tiny_vlm(kind, "tokens")
    ids = prompt(model.vision_config, [5, None, 6, 7])
    image = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        embeds = model.decoder.embed(ids)
        at = (ids[0] == IMAGE_ID).nonzero()[:, 0]
        embeds[0, at] = model.projector(model.vision(image))[0]  # the reference: written out by hand
        assert torch.equal(model(ids, [image]), model.decoder(ids, embeds=embeds))


@pytest.mark.parametrize("design", ["flamingo", "tokens"])
def test_precomputed_features_give_the_same_logits_as_pixels(design):
    model = tiny_vlm("transformer", design)
    ids = prompt(model.vision_config, [5, None, 6, 7])
    image = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        features = model.vision(image)  # (1, P, d_vision)
        assert torch.equal(model(ids, [image]), model(ids, [features]))


def test_the_vit_is_made_of_hybridlm_encoder_blocks():
    model = tiny_vlm("transformer", "tokens")
    attentions = [m for m in model.vision.modules() if isinstance(m, Attention)]
    assert len(attentions) == model.vision_config.n_layers
    # bidirectional: the first patch's features depend on the last patch's pixels
    image = torch.randn(1, 3, 16, 16)
    changed = image.clone()
    changed[:, :, 8:, 8:] += 1.0
    with torch.no_grad():
        assert not torch.allclose(model.vision(image)[0, 0], model.vision(changed)[0, 0])


def test_resampler_gives_n_latents_tokens_whatever_the_patch_count():
    model = tiny_vlm("transformer", "flamingo")
    for patches in (4, 9, 30):
        out = model.resampler(torch.randn(2, patches, model.vision_config.d_vision))
        assert out.shape == (2, model.vision_config.n_latents, model.config.d_model)


def test_placeholder_mismatch_is_a_clear_error():
    model = tiny_vlm("transformer", "flamingo")
    ids = prompt(model.vision_config, [5, None, 6])
    with pytest.raises(ValueError, match="more images than placeholders"):
        model(ids, [torch.randn(2, 3, 16, 16)])
    with pytest.raises(ValueError, match="more placeholders than images"):
        model(prompt(model.vision_config, [5, None, None, 6]), [torch.randn(1, 3, 16, 16)])
    with pytest.raises(ValueError, match="more placeholders than images"):
        model(ids)  # text only, yet a placeholder
    sampling = SamplingConfig(max_new_tokens=2, temperature=0.0)
    with pytest.raises(ValueError, match="more images than placeholders"):
        generate_with_images(model, [[5, 6]], [torch.randn(1, 3, 16, 16)], sampling)


def test_lm_frozen_training_moves_only_the_vision_parts():
    model = tiny_vlm("hybrid", "flamingo", open_gates=False).train()
    lm_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    params = model.vision_parameters()
    for p in model.decoder.parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD(params, lr=0.1)
    ids = prompt(model.vision_config, [5, None, 6, 7, 8])
    loss = model(ids, [torch.randn(1, 3, 16, 16)])[0, -1].logsumexp(-1)
    loss.backward()
    assert model.xattn[0].alpha_attn.grad is not None and model.xattn[0].alpha_attn.grad.abs() > 0  # gates learn
    opt.step()
    assert all(torch.equal(v, model.decoder.state_dict()[k]) for k, v in lm_before.items())
    assert model.xattn[0].alpha_attn.item() != 0.0
