"""An OpenAI request's sampling fields -> the engine's `RequestParams` for one choice."""

from __future__ import annotations

from ..engine import RequestParams


def request_params(req, *, max_tokens: int, seed: int | None, stop: list[str],
                   top_logprobs: int | None) -> RequestParams:
    """`req` is a validated CompletionRequest or ChatCompletionRequest. `top_logprobs` None = no
    logprobs; 0 = the chosen token's only. Raises ValueError for combinations the engine refuses."""
    return RequestParams(
        max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
        top_k=max(req.top_k, 0),  # -1 (vLLM's "off") is our 0
        min_p=req.min_p, presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
        repetition_penalty=req.repetition_penalty, seed=seed, stop=tuple(stop), ignore_eos=req.ignore_eos,
        logprobs=top_logprobs is not None, top_logprobs=top_logprobs or 0)
