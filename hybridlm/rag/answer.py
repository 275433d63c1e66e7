"""Answers from sources: retrieved chunks quoted as numbered sources in a chat prompt that asks the
model to answer from them and cite them as [n]; the answer comes back with the sources it cites.

`ask` is the library entry point (the CLI and, later, a server endpoint call it): question in,
`Answer` out, with nothing printed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .retrieve import Hit, Index, retrieve

SYSTEM = ("You answer questions using only the numbered sources given. Cite the sources you use with their "
          "numbers in square brackets, like [1] or [2]. If the sources do not contain the answer, say so.")


@dataclass
class Answer:
    question: str
    text: str  # the model's answer
    sources: list[Hit]  # the retrieved chunks, source [n] is sources[n - 1]
    cited: list[int] = field(default_factory=list)  # source numbers the answer cites, in order of first citation
    stats: dict = field(default_factory=dict)  # retrieval and generation timings

    def as_dict(self) -> dict:
        return {"question": self.question, "answer": self.text, "cited": self.cited,
                "sources": [{"n": n, **h.as_dict()} for n, h in enumerate(self.sources, start=1)], "stats": self.stats}


def source_label(hit: Hit) -> str:
    return f"{hit.path}:{hit.start_line}-{hit.end_line}"


def build_messages(question: str, hits: list[Hit], max_source_chars: int = 1200) -> list[dict]:
    """The chat turns: a system rule, then the numbered sources and the question."""
    quoted = "\n\n".join(f"[{n}] ({source_label(h)})\n{h.text[:max_source_chars]}" for n, h in enumerate(hits, start=1))
    user = f"Sources:\n\n{quoted}\n\nQuestion: {question}\nAnswer from the sources above and cite them as [n]."
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def citations(text: str, n_sources: int) -> list[int]:
    """Source numbers cited as [n] (also [1, 2] and [1][2]), each once, in order; out-of-range numbers dropped."""
    found = []
    for group in re.findall(r"\[(\d+(?:\s*,\s*\d+)*)\]", text):
        for number in re.findall(r"\d+", group):
            n = int(number)
            if 1 <= n <= n_sources and n not in found:
                found.append(n)
    return found


def ask(question: str, index: Index, encoder, loaded, k: int = 4, mode: str = "hybrid",
        sampling=None) -> Answer:
    """Retrieve k chunks for `question` and have `loaded` (a registry LoadedModel with a chat
    template) answer from them. sampling: a SamplingConfig (default: greedy, 256 new tokens)."""
    import time

    from ..generation.generate import generate
    from ..generation.sampling import SamplingConfig

    start = time.perf_counter()
    hits = retrieve(index, question, k, mode, encoder)
    retrieved = time.perf_counter()
    tok = loaded.tokenizer
    sampling = sampling or SamplingConfig(max_new_tokens=256, temperature=0.0, eos_token_ids=tuple(tok.eos_token_ids))
    prompt = tok.apply_chat_template(build_messages(question, hits), add_generation_prompt=True)
    ids = tok.encode(prompt)
    room = loaded.model.config.max_seq_len - sampling.max_new_tokens
    if len(ids) > room:
        raise ValueError(f"the prompt with {len(hits)} sources is {len(ids)} tokens, more than the model's context "
                         f"leaves ({room}); ask for fewer sources (--k)")
    result = generate(loaded.model, [ids], sampling, decode=tok.decode)
    text = result.texts[0].strip()
    stats = {"retrieve_s": retrieved - start, "prompt_tokens": len(ids), **result.stats.as_dict()}
    return Answer(question, text, hits, citations(text, len(hits)), stats)
