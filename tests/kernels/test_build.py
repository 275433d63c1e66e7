"""Build on first use: a cached library loads silently, a missing compiler means the reference path
and one warning line, and concurrent first uses build once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from hybridlm.kernels import build, qmatmul

SCRIPT = textwrap.dedent("""
    import torch
    from hybridlm.nn.quant import QuantizedWeight, QuantLinear, pack_int4, quant_linear_ref
    w = QuantizedWeight("int4", pack_int4(torch.randint(0, 16, (8, 64), dtype=torch.uint8)),
                        torch.rand(8, 2).half(), 32, 64)
    layers = [QuantLinear(w), QuantLinear(w)]  # two layers: still one warning
    x = torch.randn(2, 64)
    assert all(torch.equal(m(x), quant_linear_ref(x, w, None)) for m in layers) or layers[0].kernel == "native"
    print(layers[0].kernel, "|", layers[0].extra_repr())
""")


def run_script(env_changes: dict[str, str], script: str = SCRIPT) -> subprocess.CompletedProcess:
    env = os.environ | env_changes
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)


def test_without_a_compiler_the_reference_runs_with_one_warning(tmp_path):
    out = run_script({"CXX": str(tmp_path / "no-such-compiler"), "HYBRIDLM_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ref |") and "native library could not be built" in out.stdout
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert "native quantized kernels unavailable" in lines[0] and "no-such-compiler" in lines[0]


def test_a_built_library_loads_without_compiling():
    assert qmatmul.available()  # built (or found) by this process
    out = run_script({"HYBRIDLM_CACHE": str(build.cache_root().parent)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("native |") and f"kernel=native ({qmatmul.isa()})" in out.stdout
    assert "compiling" not in out.stderr and "warning" not in out.stderr


@pytest.mark.slow
def test_concurrent_first_uses_build_once(tmp_path):
    """Two processes start on an empty cache at once: one compiles, the other waits and loads."""
    env = os.environ | {"HYBRIDLM_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    assert all(out.startswith("native |") for out, _ in outs)
    assert sum("compiling native kernels (once" in err for _, err in outs) == 1
    libraries = list((tmp_path / "cache" / "kernels").glob("*/*.so"))
    assert len(libraries) == 1
