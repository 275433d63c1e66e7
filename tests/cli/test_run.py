"""The `hybridlm` command as users script it: stdout holds only the output, errors are one line."""

import io
import json

import pytest

from hybridlm.cli import main

GREEDY = ["--temperature", "0", "--max-new-tokens", "8"]


def test_generate_writes_only_text_to_stdout(cli):
    code, out, err = cli("generate", "smollm2-135m", "The capital of France is", *GREEDY)
    assert code == 0
    assert out.strip() and "tok/s" not in out
    assert "prefill" in err and "decode" in err and "tok/s" in err


def test_json_output_and_seeded_sampling_is_reproducible(cli):
    args = ["generate", "smollm2-135m", "Once upon a time", "--max-new-tokens", "8", "--json", "--ignore-eos"]
    _, a, _ = cli(*args, "--seed", "7")
    _, b, _ = cli(*args, "--seed", "7")
    first, second = json.loads(a), json.loads(b)
    assert first["token_ids"] == second["token_ids"] and len(first["token_ids"]) == 8
    assert first["finish_reason"] == "length"
    for key in ("text", "prompt_token_ids", "prefill_s", "decode_s", "decode_tokens_per_s", "cache_bytes", "load_s"):
        assert key in first


def test_chat_flag_uses_the_template(cli):
    code, out, _ = cli("generate", "smollm2-135m", "Say hi.", "--chat", "--json", *GREEDY)
    assert code == 0
    prompt_ids = json.loads(out)["prompt_token_ids"]
    assert prompt_ids[0] == 1  # <|im_start|> opens the system turn the template adds


def test_stop_string_is_not_printed(cli):
    code, out, _ = cli("generate", "smollm2-135m", "1, 2, 3, 4,", "--temperature", "0",
                       "--max-new-tokens", "16", "--stop", "7")
    assert code == 0 and "7" not in out


@pytest.mark.parametrize("n", ["0", "-3"])
def test_non_positive_max_new_tokens_is_an_error(cli, n, assert_one_line_error):
    assert_one_line_error(*cli("generate", "smollm2-135m", "hi", "--max-new-tokens", n), "max_new_tokens")


def test_compile_with_a_dynamic_cache_is_an_error(cli, assert_one_line_error):
    assert_one_line_error(*cli("generate", "smollm2-135m", "Hi", "--compile", "--cache", "dynamic"),
                          "--compile", "static")


@pytest.mark.slow  # compiles SmolLM2's decode step: ~1 minute on 2 cores with a cold inductor cache
def test_compiled_generate_gives_the_eager_tokens(cli):
    args = ["generate", "smollm2-135m", "The KV cache", "--json", "--ignore-eos", "--temperature", "0",
            "--max-new-tokens", "24"]
    _, eager, _ = cli(*args)
    code, compiled, err = cli(*args, "--compile")
    assert code == 0 and "compiled in" in err
    assert json.loads(compiled)["token_ids"] == json.loads(eager)["token_ids"]


def test_prompt_longer_than_the_context_is_an_error(cli, assert_one_line_error):
    prompt = "hello " * 9000
    assert_one_line_error(*cli("generate", "smollm2-135m", prompt, "--max-new-tokens", "4"), "context of 8192")


def test_unknown_model_lists_known_ones(cli, assert_one_line_error):
    assert_one_line_error(*cli("generate", "no-such-model", "hi"), "smollm2-135m")


def test_missing_checkpoint_directory(cli, tmp_path, assert_one_line_error):
    assert_one_line_error(*cli("generate", str(tmp_path / "absent"), "hi"), "absent")


def test_corrupt_checkpoint(cli, tmp_path, assert_one_line_error):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 32, "hidden_size": 16,
                                                      "num_hidden_layers": 1, "num_attention_heads": 2,
                                                      "intermediate_size": 32}))
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert_one_line_error(*cli("generate", str(tmp_path), "hi"), "model.safetensors")


def test_gguf_with_unsupported_architecture(cli, tmp_path, assert_one_line_error):
    import gguf
    import numpy as np

    path = tmp_path / "mamba.gguf"
    writer = gguf.GGUFWriter(str(path), "mamba")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert_one_line_error(*cli("generate", str(path), "hi"), "mamba")


def test_unknown_preset_in_info(cli, assert_one_line_error):
    assert_one_line_error(*cli("info", "gpt5-tiny"), "gpt5-tiny")


def test_info_json(cli):
    code, out, _ = cli("info", "smollm2-135m", "--json")
    info = json.loads(out)
    assert code == 0
    assert info["params"] == 134_515_008
    assert info["kv_bytes_per_token"] == 30 * 2 * 3 * 64 * 4
    assert info["kv_bytes_at_context"] == info["kv_bytes_per_token"] * 8192
    assert info["layer_pattern"] == "*-" * 30


def test_chat_streams_answers(cli, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("What is 2 + 2?\n/reset\nHello\n/exit\n"))
    code, out, err = cli("chat", "smollm2-135m", *GREEDY)
    assert code == 0
    assert len([line for line in out.splitlines() if line.strip()]) >= 2  # two answers
    assert "tok/s" in err


def test_convert_failure_writes_nothing(cli, tmp_path, assert_one_line_error):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf at all")
    out_dir = tmp_path / "out"
    assert_one_line_error(*cli("convert", str(bogus), str(out_dir)))
    assert not out_dir.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bogus.gguf"]


def test_convert_refuses_a_non_empty_directory(cli, tmp_path, assert_one_line_error):
    (tmp_path / "keep.txt").write_text("mine")
    assert_one_line_error(*cli("convert", "smollm2-135m", str(tmp_path)), "not empty")
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("command", ["generate", "chat", "info", "convert"])
def test_every_subcommand_explains_itself(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert len(capsys.readouterr().out) > 300


def test_top_level_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("generate", "chat", "info", "convert"):
        assert command in out


def test_generate_and_info_on_a_hybrid_checkpoint(cli, tmp_path):
    """A transformers NemotronH directory with a tokenizer.json: `generate` continues it greedily as
    transformers does, and `info` describes its Mamba layers."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models

    chars = [chr(c) for c in range(32, 127)]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.decoder = decoders.Fuse()
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    torch.manual_seed(0)
    config = transformers.NemotronHConfig(
        vocab_size=160, hidden_size=64, layers_block_type=["mamba", "mlp", "attention", "mlp"],
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=96, mamba_num_heads=8,
        mamba_head_dim=16, ssm_state_size=16, n_groups=2, chunk_size=8, initializer_range=0.2, bos_token_id=1,
        eos_token_id=2)
    hf_model = transformers.NemotronHForCausalLM(config).eval()
    hf_model.save_pretrained(tmp_path)

    code, out, err = cli("generate", str(tmp_path), "hi", "--temperature", "0", "--max-new-tokens", "5")
    assert code == 0 and "decode" in err
    code, out, _ = cli("generate", str(tmp_path), "hi", "--temperature", "0", "--max-new-tokens", "5",
                       "--ignore-eos", "--json")
    result = json.loads(out)
    assert code == 0 and result["prompt_token_ids"] == [vocab["h"], vocab["i"]]
    prompt = torch.tensor([result["prompt_token_ids"]])
    with torch.no_grad():
        want = hf_model.generate(prompt, do_sample=False, max_new_tokens=5, min_new_tokens=5, pad_token_id=0,
                                 attention_mask=torch.ones_like(prompt))[0, 2:].tolist()
    assert result["token_ids"] == want

    code, out, _ = cli("info", str(tmp_path), "--json")
    info = json.loads(out)
    assert code == 0 and info["layer_pattern"] == "M-*-" and info["mamba_layers"] == 1
    assert info["mamba_state_bytes"] == (128 + 2 * 2 * 16) * 3 * 4 + 8 * 16 * 16 * 4
    code, out, _ = cli("info", str(tmp_path))
    assert code == 0 and "Mamba state" in out


def test_generate_with_an_int8_kv_cache(cli):
    args = ["generate", "smollm2-135m", "The capital of France is", "--json", "--ignore-eos", *GREEDY]
    _, plain, _ = cli(*args, "--kv-cache", "float")
    code, int8, _ = cli(*args, "--kv-cache", "int8")
    plain, int8 = json.loads(plain), json.loads(int8)
    assert code == 0
    assert int8["token_ids"][:4] == plain["token_ids"][:4]
    assert int8["cache_bytes"] < 0.3 * plain["cache_bytes"]  # int8 codes + a float32 scale per 64 values


def test_the_gguf_default_keeps_float16_kv_as_llama_cpp_does(cli):
    # auto: the native step with int8 activations stores K/V in float16; exact activations keep float32
    args = ["generate", "smollm2-135m", "The capital of France is", "--json", "--ignore-eos", *GREEDY]
    outs = {}
    for name, extra in (("auto", []), ("float", ["--kv-cache", "float"]), ("exact", ["--quant-act", "exact"])):
        code, out, _ = cli(*args, *extra)
        assert code == 0
        outs[name] = json.loads(out)
    assert outs["auto"]["cache_bytes"] * 2 == outs["float"]["cache_bytes"]
    assert outs["exact"]["cache_bytes"] == outs["float"]["cache_bytes"]
    assert outs["auto"]["token_ids"][:4] == outs["float"]["token_ids"][:4]


def test_info_reports_the_int8_kv_cache(cli):
    code, out, _ = cli("info", "smollm2-135m", "--kv-cache", "int8", "--json")
    info = json.loads(out)
    assert code == 0 and info["kv_cache"] == "int8"
    assert info["kv_bytes_per_token"] == 30 * 2 * 3 * (64 + 4)
    _, text, _ = cli("info", "smollm2-135m", "--kv-cache", "int8")
    assert "26.6% of float32" in text


def test_compile_with_an_int8_kv_cache_is_an_error(cli, assert_one_line_error):
    assert_one_line_error(*cli("generate", "smollm2-135m", "Hi", "--compile", "--kv-cache", "int8"), "--kv-cache int8")


@pytest.mark.parametrize("flags,quantized,act_mode", [
    ([], True, "fast"),  # the default: the GGUF's own blocks, int8 activations as llama.cpp
    (["--quant-act", "exact"], True, "exact"),
    (["--dtype", "float32"], False, None),  # an explicit dtype dequantizes
])
def test_gguf_precision_follows_dtype_and_quant_act(flags, quantized, act_mode):
    from hybridlm.cli import build_parser, run
    from hybridlm.nn.quant import QuantLinear

    args = build_parser().parse_args(["generate", "smollm2-135m", "hi", "--linear", "ref", *flags])
    model = run._load(args).model
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == (4 * 30 + 1 if quantized else 0)  # 30 blocks of wqkv, wo, w_in, w_out, and the head
    assert {m.act_mode for m in layers} == ({act_mode} if quantized else set())


def test_exact_activations_give_the_float32_tokens(cli):
    args = ["generate", "smollm2-135m", "The capital of France is", "--json", "--ignore-eos", *GREEDY]
    _, exact, _ = cli(*args, "--quant-act", "exact")
    _, floating, _ = cli(*args, "--dtype", "float32")
    assert json.loads(exact)["token_ids"] == json.loads(floating)["token_ids"]


def test_info_reports_the_quantized_kernel_path(cli):
    from hybridlm.kernels import qmatmul

    code, out, _ = cli("info", "smollm2-135m", "--json")
    kernels = json.loads(out)["quant_kernels"]
    assert code == 0 and kernels["native"] and kernels["isa"] == qmatmul.isa()
    assert kernels["isa"] in kernels["supported_isas"] and "portable" in kernels["supported_isas"]
    _, text, _ = cli("info", "smollm2-135m")
    assert f"quant kernels   native {qmatmul.isa()}" in text


def test_native_decode_step_gives_the_eager_tokens_on_smollm2(cli):
    """The default (native, one C++ call per token) against the PyTorch model on the real GGUF, in
    exact mode, where both compute the dequantized model's float32 math."""
    args = ["generate", "smollm2-135m", "The KV cache", "--json", "--ignore-eos", "--temperature", "0",
            "--max-new-tokens", "24", "--quant-act", "exact"]
    _, native, _ = cli(*args, "--decode-step", "native")
    _, eager, _ = cli(*args, "--decode-step", "eager")
    assert json.loads(native)["token_ids"] == json.loads(eager)["token_ids"]


@pytest.mark.parametrize("flags,message", [
    (["--dtype", "float32", "--linear", "ref"], "not every linear is a quantized layer"),
    (["--compile"], "choose one"),
])
def test_native_decode_step_refusals_are_one_line(cli, assert_one_line_error, flags, message):
    assert_one_line_error(*cli("generate", "smollm2-135m", "hi", "--decode-step", "native", *flags), message)
