#!/usr/bin/env bash
# The whole GPU check of the Triton kernels in one go (a few minutes on an H100/H200), for a session
# that is lent a GPU: the kernel tests compiled for CUDA (the same files the CPU runs under Triton's
# interpreter), the CUDA model tests, then every bench/gpu_*.py. Output lands in ${OUT:-gpu_check}/:
# pytest.log and one <bench>.log per benchmark whose last line is its JSON.
#   bash scripts/gpu_check.sh            # tests + benchmarks
#   QUICK=1 bash scripts/gpu_check.sh    # shorter benchmark settings (~1-2 minutes)
# Needs a CUDA build of torch with triton (pip install -e '.[test,triton]' in a CUDA environment).
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python3
out=${OUT:-gpu_check}
mkdir -p "$out"
if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device visible to $py; nothing to check" >&2
  exit 2
fi
"$py" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name(0))" | tee "$out/env.txt"
status=0
echo "gpu_check: kernel and CUDA model tests" >&2
timeout 300 "$py" -m pytest -q -x -m "not browser" tests/kernels/triton tests/test_gpu.py -p no:cacheprovider \
  2>&1 | tee "$out/pytest.log" | tail -n 5 || status=1
if [ -n "${QUICK:-}" ]; then
  benches=("gpu_attention --lengths 2048,8192 --head-dims 128" "gpu_ssd --lengths 2048,8192" "gpu_kernels"
           "gpu_decode --models smollm2 --new-tokens 64")
else
  benches=("gpu_attention --backward" "gpu_ssd" "gpu_kernels" "gpu_decode")
fi
for b in "${benches[@]}"; do
  name=${b%% *}
  echo "gpu_check: bench.$b" >&2
  # shellcheck disable=SC2086
  if ! timeout 240 "$py" -m bench.$b > "$out/$name.log" 2> "$out/$name.err"; then
    echo "gpu_check: bench.$name failed; the end of $out/$name.err:" >&2
    tail -n 5 "$out/$name.err" >&2
    status=1
  else
    cat "$out/$name.log" | head -n -1
  fi
done
exit $status
