"""`generate --image` and chat's `/image` with a vision-language model directory, and the errors a
user meets: an unreadable image, an image for a text-only model, more images than placeholders."""

import io
import json

import pytest

from hybridlm.checkpoints.vlm import save_vlm
from hybridlm.generation.sampling import SamplingConfig
from hybridlm.multimodal import shapes
from hybridlm.multimodal.image import load_image
from hybridlm.multimodal.prompt import generate_with_images
from tests.multimodal.helpers import tiny_vlm

GREEDY = ["--temperature", "0", "--max-new-tokens", "3", "--ignore-eos"]


@pytest.fixture(scope="module", params=["flamingo", "tokens"])
def vlm_dir(request, tmp_path_factory):
    model = tiny_vlm("hybrid", request.param, seed=2, image_token_id=shapes.IMAGE)
    return save_vlm(model, shapes.tokenizer(), tmp_path_factory.mktemp("vlm") / request.param), model


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "scene.png"
    shapes.draw(shapes.ShapesTask("val").example(0)).save(path)
    return path


def test_generate_with_an_image_matches_the_library(cli, vlm_dir, picture):
    path, model = vlm_dir
    code, out, err = cli("generate", str(path), "what color is the square ?", "--image", str(picture), "--json", *GREEDY)
    assert code == 0, err
    got = json.loads(out)
    assert got["prompt_token_ids"][0] == shapes.IMAGE  # a prompt without placeholders gets one in front
    ids = shapes.tokenizer().encode("<image>\nwhat color is the square ?")
    image = load_image(picture, model.vision_config)
    want = generate_with_images(model, [ids], [image[None]], SamplingConfig(max_new_tokens=3, temperature=0.0,
                                                                           ignore_eos=True)).tokens[0]
    assert got["token_ids"] == want and len(want) == 3


def test_chat_attaches_images_with_slash_image(cli, vlm_dir, picture, monkeypatch, tmp_path):
    path, _ = vlm_dir
    (tmp_path / "bad.png").write_bytes(b"nope")
    script = f"/image {tmp_path / 'bad.png'}\n/image {picture}\nwhat color is the square ?\n/exit\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    code, out, err = cli("chat", str(path), *GREEDY)
    assert code == 0
    assert "cannot read" in err and "attached" in err  # the bad image is reported, the chat goes on
    assert err.count(" tok/s]") == 1  # one answer (a random model's text may be only </s>, so not read from stdout)


def test_image_errors_are_one_line(cli, vlm_dir, picture, tmp_path, tiny_llama_dir, assert_one_line_error):
    path, _ = vlm_dir
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert_one_line_error(*cli("generate", str(path), "hi ?", "--image", str(tmp_path / "bad.png"), *GREEDY),
                          "cannot read")
    assert_one_line_error(*cli("generate", str(path), "hi ?", "--image", str(tmp_path / "none.png"), *GREEDY),
                          "no image file")
    assert_one_line_error(*cli("generate", str(tiny_llama_dir), "hi", "--image", str(picture), *GREEDY),
                          "text-only model")
    assert_one_line_error(*cli("generate", str(path), "<image> what color is the square ?", "--image", str(picture),
                               "--image", str(picture), *GREEDY), "more images than placeholders")
    assert_one_line_error(*cli("generate", str(path), "<image> <image> how many ?", "--image", str(picture), *GREEDY),
                          "more placeholders than images")
