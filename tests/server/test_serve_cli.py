"""`hybridlm serve` as a user runs it: the real SmolLM2 in a subprocess, the official client, SIGTERM."""

import re
import signal
import subprocess
import sys

import openai
import pytest


def test_help_explains_the_command(capsys):
    from hybridlm.cli import main

    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for needle in ("--api-key", "HYBRIDLM_API_KEY", "--kv-memory", "--max-num-seqs", "--scheduling", "127.0.0.1",
                   "/v1/chat/completions", "/metrics", "playground"):
        assert needle in out


@pytest.mark.parametrize("argv,needle", [(["--kv-memory", "lots"], "'lots'"), (["--compile"], "--compile"),
                                         (["--scheduling", "continuous", "--max-num-seqs", "0"], "max_num_seqs")])
def test_bad_settings_are_one_line_errors(capsys, argv, needle):
    from hybridlm.cli import main

    code = main(["serve", "smollm2-135m", *argv])
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and "Traceback" not in err
    assert err.startswith("hybridlm: error:") and len(err.strip().splitlines()) == 1 and needle in err


def test_serves_smollm2_with_the_chat_template(smollm2_gguf):
    # exact activations: the dequantized model's logits, whose greedy answer transformers also gives
    # ("Paris"); the default int8 activations answer as llama.cpp does on this GGUF ("L'Étoile, ...")
    proc = subprocess.Popen([sys.executable, "-m", "hybridlm", "serve", "smollm2-135m", "--quant-act", "exact",
                             "--port", "0", "--threads", "2",
                             "--kv-memory", "64M", "--served-model-name", "smol"],
                            stderr=subprocess.PIPE, text=True)
    try:
        banner = []
        for line in proc.stderr:
            banner.append(line)
            if m := re.search(r"listening on (http://127\.0\.0\.1:\d+)", line):
                url = m.group(1)
                break
        else:
            pytest.fail(f"no banner: {''.join(banner)}")
        text = "".join(banner)
        assert re.search(r"KV cache [\d,]+ blocks of 16 = [\d,]+ tokens .* concurrent sequences of 8192 tokens", text)
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
        r = client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "What is the capital of France?"}],
                                           max_tokens=12, temperature=0)
        assert "Paris" in r.choices[0].message.content
        assert r.usage.prompt_tokens > 20  # SmolLM2's template adds its default system prompt
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
