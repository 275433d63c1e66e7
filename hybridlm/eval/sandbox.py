"""Run untrusted generated code: a child Python in its own temporary directory, with resource
limits, a timeout, no network and writes confined to that directory.

Layers (each stops a class of harm on its own; `SandboxReport` says which were active):
  1. rlimits set in the child before exec: CPU seconds (RLIMIT_CPU), address space (RLIMIT_AS),
     file size (RLIMIT_FSIZE), processes (RLIMIT_NPROC), no core dumps.
  2. A new user namespace and a new, empty network namespace (unshare(2) CLONE_NEWUSER |
     CLONE_NEWNET): no interface but a downed loopback, so no connection can be made.
     RLIMIT_NPROC is set too, but Linux exempts processes whose real user is root from it, in any
     namespace (measured here: 40 forks under a limit of 16 as root); `SandboxReport.nproc_binds`
     says whether it holds. Under root a fork bomb is stopped by the guard (3) and, without it, by
     the timeout (4) killing the whole process group. Run evaluations as a non-root user to get
     this layer as well.
  3. A guard run before the program (Python audit hooks, PEP 578, which cannot be removed once
     installed): opening a file for writing outside the directory, creating sockets, forking or
     spawning processes and loading C code with ctypes raise PermissionError. This is the layer
     that still holds where namespaces are unavailable; an audit hook alone is not a security
     boundary (C extensions already imported could bypass it), which is why it is not the only one.
  4. A wall-clock timeout; the whole process group is killed at it.

A program passes when it exits with status 0 within the timeout.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000

GUARD = r'''
import os, sys
_root = os.path.realpath(os.getcwd())
def _inside(path):
    try:
        p = os.path.realpath(os.fsdecode(path) if not isinstance(path, int) else "/proc/self/fd/%d" % path)
    except Exception:
        return False
    return p == _root or p.startswith(_root + os.sep)
_WRITE_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.chmod",
                 "os.chown", "os.truncate", "shutil.rmtree", "os.utime"}
_BLOCKED = {"socket.__new__", "socket.socket", "socket.connect", "socket.bind", "socket.getaddrinfo",
            "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "os.kill",
            "subprocess.Popen", "ctypes.dlopen", "ctypes.cdata", "os.startfile", "pty.spawn"}
def _hook(event, args):
    if event in _BLOCKED:
        raise PermissionError("sandbox: %s is not allowed" % event)
    if event == "open" and len(args) > 1 and args[1] and any(c in str(args[1]) for c in "wax+"):
        if not _inside(args[0]):
            raise PermissionError("sandbox: writing outside the working directory is not allowed")
    elif event == "open" and len(args) > 2 and isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
        if not _inside(args[0]):
            raise PermissionError("sandbox: writing outside the working directory is not allowed")
    elif event in _WRITE_EVENTS and args and not _inside(args[0]):
        raise PermissionError("sandbox: %s outside the working directory is not allowed" % event)
sys.addaudithook(_hook)
del _hook
'''


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0  # wall clock
    cpu_s: int = 10  # RLIMIT_CPU
    memory_bytes: int = 1 << 30  # RLIMIT_AS (address space)
    file_bytes: int = 1 << 20  # RLIMIT_FSIZE (largest file the program may write)
    processes: int = 16  # RLIMIT_NPROC (for the child's user)


@dataclass
class SandboxResult:
    passed: bool
    status: str  # "passed", "failed" (non-zero exit), "timeout"
    returncode: int | None
    stderr_tail: str  # the last 2,000 characters of stderr
    seconds: float


@dataclass
class SandboxReport:
    """Which layers `run_program` can apply on this machine."""

    namespaces: bool  # own user + network namespace (no network)
    nproc_binds: bool  # RLIMIT_NPROC limits the child (not for a root real user)
    audit_guard: bool = True
    rlimits: bool = True


def _unshare(flags: int) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.unshare(flags) == 0


def _probe_network_namespace() -> bool:
    """Whether a child can get its own network namespace here (tried in a throwaway process)."""
    code = f"import ctypes,sys; sys.exit(0 if ctypes.CDLL(None).unshare({CLONE_NEWUSER | CLONE_NEWNET}) == 0 else 1)"
    try:
        return subprocess.run([sys.executable, "-c", code], timeout=10, capture_output=True).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


_REPORT: SandboxReport | None = None


def sandbox_report() -> SandboxReport:
    global _REPORT
    if _REPORT is None:
        _REPORT = SandboxReport(namespaces=_probe_network_namespace(), nproc_binds=os.getuid() != 0)
    return _REPORT


def _child_setup(limits: SandboxLimits, report: SandboxReport):
    def setup():  # runs in the forked child before exec: only async-signal-safe-ish work
        import resource

        os.setsid()
        if report.namespaces and not _unshare(CLONE_NEWUSER | CLONE_NEWNET):
            os._exit(125)  # worked in the probe: refuse to run with fewer layers than reported
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
    return setup


def run_program(source: str, limits: SandboxLimits = SandboxLimits(), guard: bool = True) -> SandboxResult:
    """Run Python `source` in the sandbox; it passes when it exits 0 within the timeout.
    guard=False leaves out the audit-hook layer (tests use it to prove the other layers hold alone)."""
    report = sandbox_report()
    workdir = tempfile.mkdtemp(prefix="hybridlm-sandbox-")
    start = time.perf_counter()
    try:
        with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as f:
            f.write(source)
        with open(os.path.join(workdir, "guard.py"), "w", encoding="utf-8") as f:
            f.write(GUARD)
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONHASHSEED": "0", "LANG": "C.UTF-8"}
        boot = ("exec(open('guard.py').read()); " if guard else "") + "import runpy; runpy.run_path('program.py', run_name='__main__')"
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", boot], cwd=workdir, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                preexec_fn=_child_setup(limits, report))
        try:
            _, err = proc.communicate(timeout=limits.timeout_s)
            status = "passed" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            _, err = proc.communicate()
            status = "timeout"
        return SandboxResult(status == "passed", status, proc.returncode, err.decode("utf-8", "replace")[-2000:],
                             time.perf_counter() - start)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
