"""The `hybridlm` command: thin subcommands over the library, one module per group of commands.

Conventions others script against: `generate` writes only the generated text to stdout and
everything else (load time, speed, warnings) to stderr; errors are one line on stderr and a
non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from . import analyze, compress, data, embed, eval, finetune, prune, quantize, rag, run, serve, train

EXIT_ERROR, EXIT_INTERRUPTED = 1, 130
GROUPS = (run, train, finetune, data, analyze, quantize, prune, compress, serve, embed, rag, eval)  # each module has register(subparsers); its commands set `func`


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybridlm",
        description="Build, run and measure Transformer and hybrid language models. "
                    "Models: registry names (see `hybridlm info --list`), GGUF files, HF checkpoint dirs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..cache import CacheFullError
    from ..checkpoints.errors import CheckpointError
    from ..config import ConfigError
    from ..presets import UnknownPresetError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, ConfigError, UnknownPresetError, CacheFullError, ValueError,
            FileExistsError, FileNotFoundError) as err:
        print(f"hybridlm: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("hybridlm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_ERROR
