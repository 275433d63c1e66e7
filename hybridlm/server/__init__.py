"""OpenAI-compatible HTTP serving over the engine: schemas, SSE, metrics, the engine's thread and
the web playground. It translates between the OpenAI schema and engine requests, nothing more.

    from hybridlm.server import ServeConfig
    from hybridlm.server.main import build_context, serve
    ctx = build_context(model, tokenizer, ServeConfig(port=8000), EngineConfig())
    serve(ctx, "my-model")
"""

from .config import ServeConfig, parse_bytes

__all__ = ["ServeConfig", "parse_bytes"]
