"""`hybridlm generate <t5-dir> "text"`: the prompt feeds the encoder and the decoder's output is
printed; the same tokens as transformers' T5 greedy generate from the same ids."""

import json

import pytest
import torch
import transformers


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory, pydoc_text):
    from hybridlm.tokenizer import Tokenizer

    tok = Tokenizer.train_bpe([pydoc_text[:30000]], 300, special_tokens=("<pad>", "</s>"))
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=tok.vocab_size, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4,
                                   dropout_rate=0.0, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    model = transformers.T5ForConditionalGeneration(config).eval()
    path = tmp_path_factory.mktemp("t5")
    model.save_pretrained(path)
    tok.to_hf_files(path)
    assert tok.token_to_id("</s>") == 1
    return path, model, tok


def test_generate_feeds_the_prompt_to_the_encoder(cli, t5_dir):
    path, hf, tok = t5_dir
    code, out, err = cli("generate", str(path), "The quick brown fox", "--temperature", "0", "--repetition-penalty",
                         "5", "--max-new-tokens", "8", "--json", "--device", "cpu", "--dtype", "float32")
    assert code == 0, err
    record = json.loads(out)
    source = tok.encode("The quick brown fox") + [1]  # T5's tokenizer ends the source with </s>
    with torch.no_grad():
        want = hf.generate(input_ids=torch.tensor([source]), max_new_tokens=8, do_sample=False,
                           repetition_penalty=5.0)[0, 1:].tolist()
    want = want[: want.index(1)] if 1 in want else want
    assert record["token_ids"] == want and len(want) >= 3
    assert record["text"] == tok.decode(want)


def test_models_that_cannot_run_here_are_refused(cli, t5_dir, assert_one_line_error):
    path, _, _ = t5_dir
    assert_one_line_error(*cli("generate", "all-minilm-l6-v2", "hello", "--device", "cpu"), "encoder", "hybridlm embed")
    assert_one_line_error(*cli("generate", str(path), "hello", "--compile", "--device", "cpu"), "encoder-decoder")
    assert_one_line_error(*cli("chat", str(path), "--device", "cpu"), "encoder-decoder", "generate")
