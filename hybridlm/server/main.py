"""`serve`: a loaded model + configs -> engine, runner, app, uvicorn, until SIGINT/SIGTERM.

uvicorn owns the signals: on SIGTERM (or Ctrl-C) it stops accepting connections and gives in-flight
requests `ServeConfig.shutdown_timeout_s` to finish; what is still streaming then is cancelled (its
sequences aborted); the app's lifespan stops the engine thread; the process exits 0.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Callable

from .app import ServerContext, create_app
from .config import ServeConfig
from .runner import EngineRunner


def build_context(model, tokenizer, serve_config: ServeConfig, engine_config,
                  adapters: dict | None = None) -> ServerContext:
    """Engine, runner (not started) and handler context for a loaded model and its tokenizer.

    adapters: served name -> a copy of `model` carrying that LoRA adapter (finetune.peft_format
    `adapter_copy`: the base weights shared, the adapter unmerged). Each gets an engine and runner
    of its own: requests naming it in `model` batch with each other, not with other adapters', and
    each engine holds its own KV pool of engine_config's size."""
    from ..engine import Engine
    from .params import request_params

    def runner_for(m):
        return EngineRunner(Engine(m, tokenizer, engine_config), stats_interval_s=serve_config.stats_interval_s)

    engine = Engine(model, tokenizer, engine_config)
    runner = EngineRunner(engine, stats_interval_s=serve_config.stats_interval_s)
    facts = capacity_facts(engine, model.config.max_seq_len)
    facts["engine_config"] = {k: getattr(engine_config, k) for k in engine_config.__dataclass_fields__}
    return ServerContext(serve_config, runner, tokenizer, model.config.max_seq_len, request_params,
                         engine_config.max_queue, facts,
                         adapters={name: runner_for(m) for name, m in (adapters or {}).items()})


def capacity_facts(engine, seq_len: int) -> dict:
    """What the memory budgets hold (engine.capacity): KV blocks and tokens, sequences of `seq_len`
    at once, Mamba state bytes and snapshot rows."""
    return engine.capacity(seq_len).as_dict()


def banner(name: str, ctx: ServerContext, url: str) -> list[str]:
    f = ctx.facts
    lines = [f"hybridlm serve: model {name}, context {ctx.max_seq_len} tokens",
             f"hybridlm serve: KV cache {f['kv_blocks']:,} blocks of {f['block_size']} = {f['kv_tokens']:,} tokens "
             f"({f['kv_bytes_per_token']:,} B/token): {f['max_seqs']} concurrent sequences of {f['seq_len']} tokens"]
    if f["kv_tokens"] < ctx.max_seq_len:
        lines.append(f"hybridlm serve: warning: the KV cache holds less than one full context; a request's prompt "
                     f"+ max_tokens is limited to {f['kv_tokens']:,} tokens (raise --kv-memory for more)")
    if f.get("state_bytes_per_seq"):
        lines.append(f"hybridlm serve: Mamba state {f['state_bytes_per_seq'] / 2**20:.2f} MiB per running sequence, "
                     f"{f['snapshot_rows']} prefix snapshots")
    lines.append(f"hybridlm serve: listening on {url} (playground at /, API at /v1"
                 + (", API key required)" if ctx.config.api_key else ")"))
    return lines


def serve(ctx: ServerContext, model_label: str, log: Callable[[str], None] | None = None) -> int:
    """Run the server in this thread until a signal stops it; returns the exit status."""
    import uvicorn

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    cfg = ctx.config
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((cfg.host, cfg.port))
    except OSError as err:
        sock.close()
        raise ValueError(f"cannot listen on {cfg.host}:{cfg.port}: {err.strerror or err}") from None
    port = sock.getsockname()[1]
    host = f"[{cfg.host}]" if family == socket.AF_INET6 else cfg.host
    url = f"http://{host}:{port}"
    app = create_app(ctx)
    # uvicorn's own deadline only backs ours up: past it, it drops connections mid-body
    config = uvicorn.Config(app, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=cfg.shutdown_timeout_s + 5)

    class _Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal after its shutdown, so the process would die of it; a
            # shutdown that went well exits with status 0 instead
            getattr(self, "_captured_signals", []).clear()

        async def startup(self, sockets=None):
            await super().startup(sockets)
            if not self.should_exit:
                for line in banner(model_label, ctx, url):
                    log(line)

        async def shutdown(self, sockets=None):
            # uvicorn stops listening and waits for open responses; ours get shutdown_timeout_s to
            # finish, then their sequences are aborted and each stream ends with an error event
            log(f"hybridlm serve: shutting down ({ctx.runner.stats.live} requests in flight, "
                f"up to {cfg.shutdown_timeout_s:g} s to finish)")
            ctx.runner.stop_accepting()

            async def cancel_later():
                await asyncio.sleep(cfg.shutdown_timeout_s)
                ctx.runner.cancel_all()

            timer = asyncio.ensure_future(cancel_later())
            try:
                await super().shutdown(sockets)
            finally:
                timer.cancel()

    server = _Server(config)
    server.run(sockets=[sock])
    log("hybridlm serve: stopped")
    return 0
