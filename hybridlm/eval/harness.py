"""The `hybridlm` model for EleutherAI's lm-evaluation-harness (lm-eval 0.4).

Importing this module registers the model with lm-eval's `register_model`, so
`lm_eval.simple_evaluate(model="hybridlm", model_args="pretrained=<model>,...")` and
`hybridlm eval harness --tasks ...` run any model our registry loads (a registry name, a GGUF
file, an HF directory, a `hybridlm quantize` output). model_args: pretrained (required),
dtype (float32|bfloat16|float16; default float32), max_length (tokens; default the model's
max_seq_len), impl ("cache": shared contexts prefilled once, or "ref"), keep_quantized (GGUF).

It follows lm-eval's own HF backend wherever a choice changes a number: tokenization through
lm-eval's `TemplateLM` (`_encode_pair`, empty contexts scored after the prefix token: BOS, else
EOS), contexts truncated from the left to max_length, rolling log-likelihood over lm-eval's own
disjoint windows (`get_rolling_token_windows`, context_len=1), and `generate_until` cut at the
first `until` string. The log-likelihoods come from eval/loglikelihood.py, the scorer our own
multiple-choice task uses, so the two cannot drift apart.
"""

from __future__ import annotations

import lm_eval.models  # noqa: F401  lm-eval fills its registry lazily only while it is empty: fill it first
import torch
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from ..generation import SamplingConfig, generate
from .loglikelihood import score

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@register_model("hybridlm")
class HybridLM(TemplateLM):
    def __init__(self, pretrained: str | None = None, dtype: str = "float32", max_length: int | None = None,
                 impl: str = "cache", keep_quantized: bool = False, batch_size: int | str = 1,
                 device: str | None = "cpu", max_gen_toks: int = 256, model=None, tokenizer=None, **_ignored):
        """Load `pretrained` with checkpoints.registry.load_model, or wrap an already loaded
        `model` + `tokenizer` (the Python API). batch_size and device come from lm-eval's own
        options: generation batches by batch_size; the model runs on `device` (default cpu)."""
        super().__init__()
        if model is None:
            if not pretrained:
                raise ValueError("the hybridlm lm-eval model needs model_args pretrained=<model>")
            if dtype not in _DTYPES:
                raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, not {dtype!r}")
            from ..checkpoints.registry import load_model

            loaded = load_model(pretrained, dtype=_DTYPES[dtype], device=device or "cpu",
                                keep_quantized=str(keep_quantized).lower() in ("1", "true"))
            model, tokenizer = loaded.model, loaded.tokenizer
        self.model, self.tokenizer = model.eval(), tokenizer
        self.impl = impl
        self._max_length = int(max_length) if max_length else model.config.max_seq_len
        self.batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self.max_gen_toks = int(max_gen_toks)

    # -- what TemplateLM needs -----------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        eos = self.tokenizer.eos_token_ids
        if not eos:
            raise ValueError("the model's tokenizer has no EOS token, which lm-eval needs")
        return eos[0]

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        # None: the tokenizer's own BOS rule, as the HF backend's tokenizer(...) default does
        return self.tokenizer.encode(string, add_bos=add_special_tokens)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        reqs = [(ctx, cont) for _, ctx, cont in requests]
        limit = self.max_length
        # the HF backend feeds at most max_length tokens: (context + continuation)[-(max_length + 1):][:-1]
        reqs = [(ctx[max(0, len(ctx) + len(cont) - 1 - limit):], cont) for ctx, cont in reqs]
        bar = lambda xs: tqdm(xs, desc="hybridlm loglikelihood", disable=disable_tqdm)  # noqa: E731
        out = []
        for (key, _, _), s in zip(requests, score(self.model, reqs, impl=self.impl, truncate=True, progress=bar)):
            out.append((s.logprob, s.greedy))
            self.cache_hook.add_partial("loglikelihood", key, (s.logprob, s.greedy))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for req in tqdm(requests, desc="hybridlm rolling", disable=disable_tqdm):
            (string,) = req.args
            windows = [lm_utils.make_disjoint_window(w) for w in lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            total = sum(s.logprob for s in score(self.model, windows, impl=self.impl, truncate=True))
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in tqdm(requests, desc="hybridlm generate", disable=disable_tqdm):
            context, gen_kwargs = req.args
            kwargs = dict(gen_kwargs)
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            temperature = float(kwargs.pop("temperature", 0.0))
            if not kwargs.pop("do_sample", temperature > 0):
                temperature = 0.0
            if max_new >= self.max_length:
                raise ValueError(f"max_gen_toks ({max_new}) leaves no room for a prompt in max_length ({self.max_length})")
            ids = self.tok_encode(context)[-(self.max_length - max_new):]  # the HF backend's left truncation
            sampling = SamplingConfig(max_new_tokens=max_new, temperature=temperature,
                                      stop=tuple(u for u in until if u), seed=kwargs.pop("seed", None))
            text = generate(self.model, [ids], sampling, decode=self.tok_decode).texts[0]
            for u in until:  # generate cut at the first stop already; this keeps lm-eval's exact rule
                if u:
                    text = text.split(u)[0]
            out.append(text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return out


def run_harness(argv: list[str]) -> int:
    """lm-eval's own command line (`lm-eval run ...`) with `--model hybridlm` registered and set."""
    from lm_eval._cli import HarnessCLI

    argv = list(argv)
    if "--model" not in argv:
        argv = ["--model", "hybridlm", *argv]
    if "--device" not in argv:  # lm-eval's default is cuda, which a CPU machine does not have
        argv += ["--device", "cuda" if torch.cuda.is_available() else "cpu"]
    cli = HarnessCLI()
    args = cli._parser.parse_args(["run", *argv])
    cli.execute(args)
    return 0
