"""A real uvicorn server on a free 127.0.0.1 port, over the real engine, with a tiny random model
and a tiny BPE tokenizer that has a ChatML template (fast), or with SmolLM2."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import torch
from torch import nn

from hybridlm.models.decoder import Decoder
from hybridlm.presets import get_preset
from hybridlm.tokenizer import Tokenizer

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="session")
def tiny_tokenizer(pydoc_text) -> Tokenizer:
    trained = Tokenizer.train_bpe([pydoc_text[:200_000]], vocab_size=512, special_tokens=("<|im_end|>", "<|im_start|>"))
    return Tokenizer(trained.backend, eos_token="<|im_end|>", chat_template=CHATML)


def tiny_model(preset: str, vocab_size: int, max_seq_len: int = 256, seed: int = 0) -> Decoder:
    """A random Decoder with peaked logits (N(0, 0.5) weights), so greedy paths are not noise."""
    cfg = get_preset(preset, vocab_size=vocab_size, max_seq_len=max_seq_len, eos_token_id=None)
    model = Decoder(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.normal_(0.0, 0.5, generator=gen)
    return model


class LiveServer:
    """uvicorn serving create_app(ctx) in a background thread; `url`, `ctx`, `stop()`."""

    def __init__(self, ctx):
        import uvicorn

        from hybridlm.server.app import create_app

        self.ctx = ctx
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(ctx), log_level="warning", access_log=False,
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


@pytest.fixture(scope="session")
def make_server():
    """make_server(model, tokenizer, serve_config=None, **engine_config) -> LiveServer (stopped at the end)."""
    from hybridlm.engine import EngineConfig
    from hybridlm.server.config import ServeConfig
    from hybridlm.server.main import build_context

    servers = []

    def make(model, tokenizer, serve_config=None, **engine):
        engine.setdefault("kv_memory", 8 << 20)
        engine.setdefault("max_num_seqs", 8)
        engine.setdefault("max_num_batched_tokens", 256)
        ctx = build_context(model, tokenizer, serve_config or ServeConfig(model_name="tiny"), EngineConfig(**engine))
        server = LiveServer(ctx)
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def tiny_server(make_server, tiny_tokenizer):
    """The shared default server: a random llama-tiny behind the real engine."""
    return make_server(tiny_model("llama-tiny", tiny_tokenizer.vocab_size), tiny_tokenizer)


@pytest.fixture(scope="session")
def client(tiny_server):
    from openai import OpenAI

    return OpenAI(base_url=tiny_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
