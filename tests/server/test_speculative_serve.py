"""A server whose engine speculates (`--speculative prompt-lookup`) answers exactly as one that does
not, streamed or not, and counts its drafts in /metrics."""

import httpx

from tests.server.conftest import tiny_model

EXACT = {"ignore_eos": True}
PROMPT = "The list type. The list type. The tuple type. The list type. The"  # n-grams recur: drafts happen


def test_speculative_server_gives_the_same_text_and_reports_drafts(make_server, tiny_server, tiny_tokenizer):
    from openai import OpenAI

    model = tiny_model("llama-tiny", tiny_tokenizer.vocab_size)  # the same weights as tiny_server's
    server = make_server(model, tiny_tokenizer, speculative="prompt-lookup:2", num_speculative_tokens=3)
    spec = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    plain = OpenAI(base_url=tiny_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    kwargs = dict(model="tiny", prompt=PROMPT, max_tokens=24, temperature=0, extra_body=EXACT)
    want = plain.completions.create(**kwargs).choices[0].text
    got = spec.completions.create(**kwargs)
    assert got.choices[0].text == want and got.usage.completion_tokens == 24
    streamed = "".join(c.choices[0].text for c in spec.completions.create(**kwargs, stream=True) if c.choices)
    assert streamed == want
    metrics = httpx.get(server.url + "/metrics").text
    drafts = next(line for line in metrics.splitlines() if line.startswith("hybridlm_spec_decode_draft_tokens_total"))
    assert float(drafts.split()[-1]) > 0
    assert "hybridlm_spec_decode_accepted_tokens_total" in metrics
