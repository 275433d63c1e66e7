"""`python tests/server/serve_tiny.py [--api-key K] [--shutdown-timeout S]`: serve the tests' tiny
random model through `hybridlm.server.main.serve` (the code path of `hybridlm serve` after loading),
on a free port; the URL is printed on stderr. For tests that need a real process (SIGTERM)."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import CHATML, tiny_model  # noqa: E402


def main() -> int:
    from pydoc_data.topics import topics

    from hybridlm.engine import EngineConfig
    from hybridlm.server.config import ServeConfig
    from hybridlm.server.main import build_context, serve
    from hybridlm.tokenizer import Tokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--shutdown-timeout", type=float, default=1.0)
    ap.add_argument("--max-seq-len", type=int, default=4096)
    args = ap.parse_args()
    text = "\n\n".join(topics[k] for k in sorted(topics))[:200_000]
    trained = Tokenizer.train_bpe([text], vocab_size=512, special_tokens=("<|im_end|>", "<|im_start|>"))
    tok = Tokenizer(trained.backend, eos_token="<|im_end|>", chat_template=CHATML)
    model = tiny_model("llama-tiny", tok.vocab_size, max_seq_len=args.max_seq_len)
    ctx = build_context(model, tok, ServeConfig(port=0, model_name="tiny", shutdown_timeout_s=args.shutdown_timeout),
                        EngineConfig(kv_memory=32 << 20, max_num_seqs=4, max_num_batched_tokens=256))
    return serve(ctx, "tiny")


if __name__ == "__main__":
    sys.exit(main())
