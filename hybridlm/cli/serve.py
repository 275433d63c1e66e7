"""`serve`: the OpenAI-compatible HTTP server with continuous batching and a web playground."""

from __future__ import annotations

import os
import sys

from .run import _add_model_args, _load


def cmd_serve(args) -> int:
    from ..engine import EngineConfig
    from ..server.config import ServeConfig, parse_bytes
    from ..server.main import build_context, serve

    if args.compile:
        raise ValueError("--compile is not available with serve: the engine runs its own paged-attention step")
    api_key = args.api_key if args.api_key is not None else os.environ.get("HYBRIDLM_API_KEY") or None
    serve_config = ServeConfig(host=args.host, port=args.port, api_key=api_key,
                               shutdown_timeout_s=args.shutdown_timeout,
                               model_name=args.served_model_name or args.model)
    engine_config = EngineConfig(
        block_size=args.block_size, kv_memory=parse_bytes(args.kv_memory),
        mamba_state_memory=parse_bytes(args.mamba_state_memory, allow_zero=True),
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        enable_prefix_caching=not args.no_prefix_caching, scheduling=args.scheduling, max_queue=args.max_queue,
        speculative=args.speculative, num_speculative_tokens=args.num_speculative_tokens)
    loaded = _load(args)
    adapters = _adapters(loaded.model, args.adapter, serve_config.model_name)
    ctx = build_context(loaded.model, loaded.tokenizer, serve_config, engine_config, adapters)
    print(f"hybridlm serve: loaded {loaded.name} in {loaded.load_seconds:.1f} s"
          + (f"; LoRA adapters served as {', '.join(adapters)}" if adapters else ""), file=sys.stderr, flush=True)
    return serve(ctx, loaded.name)


def _adapters(model, specs: list[str], base_name: str) -> dict:
    """NAME=DIR options -> {NAME: a copy of the model sharing its weights, with that adapter}."""
    from ..finetune.peft_format import adapter_copy

    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--adapter takes NAME=DIR, not {spec!r}")
        if name in out or name == base_name:
            raise ValueError(f"--adapter name {name!r} is used twice (the base model is served as {base_name!r})")
        out[name] = adapter_copy(model, path)[0].eval()
    return out


def register(sub) -> None:
    """Add `serve` to the `hybridlm` parser."""
    p = sub.add_parser(
        "serve", help="OpenAI-compatible HTTP server (continuous batching, prefix caching) with a web playground",
        description="Serve a model over HTTP: POST /v1/completions and /v1/chat/completions (OpenAI's schema, "
                    "streaming with server-sent events), GET /v1/models, /health, /metrics (Prometheus), and a "
                    "chat playground at /. Requests are batched continuously by the engine; identical prompt "
                    "prefixes are computed once. Binds 127.0.0.1 unless --host says otherwise. Stops cleanly "
                    "on SIGTERM or Ctrl-C.")
    _add_model_args(p, adapter=False)
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                   help="also serve the base with this LoRA adapter (PEFT format) as model id NAME: a request's "
                        "`model` field picks the base or an adapter (repeatable). The base weights are shared; "
                        "each adapter gets an engine of its own (its requests batch together) with its own "
                        "--kv-memory")
    p.set_defaults(cache="static")  # what the shared model loading expects; the engine has its own cache

    http = p.add_argument_group("HTTP")
    http.add_argument("--host", default="127.0.0.1",
                      help="address to listen on; 0.0.0.0 exposes the server to the network (there is no TLS; default 127.0.0.1)")
    http.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 = any free port)")
    http.add_argument("--api-key", default=None,
                      help="require `Authorization: Bearer KEY` on every /v1 request (default: the "
                           "HYBRIDLM_API_KEY environment variable, else no key)")
    http.add_argument("--served-model-name", default=None,
                      help="the model id clients send and /v1/models lists (default: the model argument)")
    http.add_argument("--shutdown-timeout", type=float, default=10.0,
                      help="seconds in-flight requests get to finish after SIGTERM before they are cancelled (default 10)")

    eng = p.add_argument_group("engine")
    eng.add_argument("--kv-memory", default="512M",
                     help="bytes for the paged KV cache of all attention layers (e.g. 512M, 2G); the start-up "
                          "message says how many tokens and sequences fit (default 512M)")
    eng.add_argument("--mamba-state-memory", default="64M",
                     help="bytes for Mamba state snapshots of hybrid models (prefix caching); 0 = none (default 64M)")
    eng.add_argument("--block-size", type=int, default=16, help="tokens per KV block (default 16)")
    eng.add_argument("--max-num-seqs", type=int, default=64, help="most sequences decoded together (default 64)")
    eng.add_argument("--max-num-batched-tokens", type=int, default=512,
                     help="token budget of one step: every running sequence's next token plus prompt chunks (default 512)")
    eng.add_argument("--max-queue", type=int, default=1024,
                     help="waiting requests beyond which new ones get 429 (too many requests; default 1024)")
    eng.add_argument("--scheduling", default="continuous", choices=["continuous", "static"],
                     help="continuous = a finished sequence's slot is refilled at once (vLLM-style); "
                          "static = a batch runs until its longest member ends (for comparison); default continuous")
    eng.add_argument("--no-prefix-caching", action="store_true", help="compute every prompt in full")
    spec = p.add_argument_group("speculative decoding (same tokens when greedy, same distribution when sampling)")
    spec.add_argument("--speculative", default=None, metavar="prompt-lookup[:MAX_NGRAM]",
                      help="each decoding sequence proposes up to K tokens by matching its last n-gram (up to "
                           "MAX_NGRAM, default 3) in its prompt and output, and the step verifies them: faster when "
                           "outputs quote their input; /metrics reports drafts and acceptance (default off)")
    spec.add_argument("--num-speculative-tokens", type=int, default=4, metavar="K",
                      help="most draft tokens a sequence verifies per step (default 4)")
    p.set_defaults(func=cmd_serve)
