"""Build-on-first-use for the C++ kernels: compile once per machine into a cache folder, then load.

    <cache>/<name>-<key>/<name>.so     cache = $HYBRIDLM_CACHE/kernels, else ~/.cache/hybridlm/kernels
                                       key = hash of the sources, flags, compiler and torch version

Each translation unit is compiled by its own compiler process, all at once, each with its own
flags: the SIMD units are built for their instruction sets (by a target pragma) while the op unit
that includes torch's headers is built for the baseline, so one library runs on every x86 CPU
and picks its kernels at run time (qmatmul_ops.cpp). Not `torch.utils.cpp_extension.load`: that
needs ninja (not on every machine) and gives every unit the same flags; its include and library
paths are used as they are.

A file lock makes concurrent first uses (pytest workers, two servers) wait for one build instead
of racing; the library is written under a temporary name and renamed into place. The compiler is
$CXX, else g++. Compiling takes ~10-20 s of CPU once; later processes only load the library.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

HERE = Path(__file__).parent
COMMON_FLAGS = ("-O3", "-std=c++20", "-fPIC", "-ffp-contract=off")  # no FMA contraction: dequantize is bit-exact


class KernelUnavailable(RuntimeError):
    """A native kernel library could not be built or loaded here (no compiler, a compile error...)."""


@dataclass(frozen=True)
class Unit:
    """One translation unit of a library."""

    source: str  # file name in hybridlm/kernels
    uses_torch: bool = False  # includes torch headers: needs their include paths and ABI flag


def cache_root() -> Path:
    base = os.environ.get("HYBRIDLM_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "hybridlm") / "kernels"


def compiler() -> str:
    return os.environ.get("CXX") or "g++"


def _torch_flags() -> list[str]:
    from torch.utils.cpp_extension import include_paths

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [f"-I{p}" for p in include_paths()] + [f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]


def _link_flags() -> list[str]:
    from torch.utils.cpp_extension import library_paths

    flags = ["-shared", "-pthread"]
    for p in library_paths():
        flags += [f"-L{p}", f"-Wl,-rpath,{p}"]
    return flags + ["-lc10", "-ltorch_cpu"]


def _key(name: str, units: tuple[Unit, ...], headers: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for part in (name, compiler(), torch.__version__, " ".join(COMMON_FLAGS), *_torch_flags()):
        h.update(part.encode() + b"\0")
    for file in sorted({u.source for u in units} | set(headers)):
        h.update(file.encode() + b"\0" + (HERE / file).read_bytes() + b"\0")
    return h.hexdigest()[:16]


@contextmanager
def _locked(path: Path):
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _compile(units: tuple[Unit, ...], out: Path, work: Path) -> None:
    cxx = compiler()
    jobs = []
    for unit in units:
        obj = work / (Path(unit.source).stem + ".o")
        cmd = [cxx, *COMMON_FLAGS, *(_torch_flags() if unit.uses_torch else []), "-c", str(HERE / unit.source),
               "-o", str(obj)]
        jobs.append((unit, obj, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    failures = []
    for unit, _, proc in jobs:
        _, err = proc.communicate()
        if proc.returncode:
            failures.append(f"{unit.source}: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
    if failures:
        raise KernelUnavailable(f"compiling with {cxx} failed: {'; '.join(failures)}")
    link = subprocess.run([cxx, *[str(obj) for _, obj, _ in jobs], "-o", str(out), *_link_flags()],
                          capture_output=True, text=True)
    if link.returncode:
        raise KernelUnavailable(f"linking with {cxx} failed: {link.stderr.strip()[-300:]}")


def build(name: str, units: tuple[Unit, ...], headers: tuple[str, ...] = ()) -> Path:
    """The path of library `name` built from `units` (compiled now if no cached build matches).
    Raises KernelUnavailable with the reason when it cannot be built."""
    folder = cache_root() / f"{name}-{_key(name, units, headers)}"
    library = folder / f"{name}.so"
    if library.is_file():
        return library
    if shutil.which(compiler()) is None:
        raise KernelUnavailable(f"no C++ compiler: {compiler()!r} was not found (set CXX, or install g++)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KernelUnavailable(f"cannot create the kernel cache {folder}: {e}") from e
    with _locked(folder / "lock"):
        if library.is_file():  # another process built it while we waited
            return library
        print(f"hybridlm: compiling native kernels (once; cached in {folder})", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(dir=folder) as work:
            partial = Path(work) / library.name
            _compile(units, partial, Path(work))
            os.replace(partial, library)
    return library
