"""The code sandbox contains malicious completions (fork bomb, infinite loop, writing outside its
directory, opening a socket, eating memory, huge files) and scores them as failures; each
containment layer holds on its own where the machine offers it; pass@k is the Codex estimator."""

import math
import os
import time

import pytest

from hybridlm.eval.generation_tasks import pass_at_k, score_code
from hybridlm.eval.sandbox import SandboxLimits, run_program, sandbox_report
from hybridlm.eval.tasks import CodeItem

FAST = SandboxLimits(timeout_s=3.0, cpu_s=3)


def sandbox_processes() -> list[int]:
    """Processes whose working directory is a sandbox directory (deleted or not)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if "hybridlm-sandbox-" in os.readlink(f"/proc/{pid}/cwd"):
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_a_correct_program_passes_and_a_wrong_one_fails():
    assert run_program("assert sum([1, 2]) == 3", FAST).status == "passed"
    bad = run_program("assert sum([1, 2]) == 4", FAST)
    assert bad.status == "failed" and "AssertionError" in bad.stderr_tail


def test_infinite_loop_is_killed_at_the_timeout():
    start = time.perf_counter()
    r = run_program("while True:\n    pass", SandboxLimits(timeout_s=1.5, cpu_s=30))
    assert r.status == "timeout" and not r.passed
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("guard", [True, False])
def test_fork_bomb_is_contained(guard):
    # without the guard: RLIMIT_NPROC where it binds (non-root), else the timeout's group kill
    r = run_program("import os\nwhile True:\n    os.fork()", SandboxLimits(timeout_s=2.0, cpu_s=5), guard=guard)
    assert not r.passed
    time.sleep(0.5)
    assert sandbox_processes() == []  # the whole process group went with it


def test_writing_outside_its_directory_fails(tmp_path):
    guard = True  # the one layer that confines writes (see sandbox.py)
    target = tmp_path / "escaped.txt"
    r = run_program(f"open({str(target)!r}, 'w').write('x')", FAST, guard=guard)
    assert not r.passed and not target.exists()
    r = run_program(f"import os\nos.mkdir({str(tmp_path / 'd')!r})", FAST, guard=guard)
    assert not r.passed and not (tmp_path / "d").exists()
    assert run_program("open('inside.txt', 'w').write('x')\nassert open('inside.txt').read() == 'x'", FAST).passed


@pytest.mark.parametrize("guard", [True, False])
def test_a_socket_cannot_reach_anything(guard):
    if not guard and not sandbox_report().namespaces:
        pytest.skip("no network namespace here; the guard is the only network layer")
    code = "import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', 22))"
    r = run_program(code, FAST, guard=guard)
    assert not r.passed and ("PermissionError" in r.stderr_tail or "OSError" in r.stderr_tail
                             or "ConnectionRefused" in r.stderr_tail or "unreachable" in r.stderr_tail)
    if not guard:  # the namespace has no usable interface at all, not merely a refused port
        r = run_program("import socket\ns = socket.socket()\ns.connect(('1.1.1.1', 80))", FAST, guard=False)
        assert "unreachable" in r.stderr_tail


def test_process_limit_binds_where_the_report_says_so():
    code = ("import os, sys, time\nn = 0\ntry:\n    for _ in range(12):\n        if os.fork() == 0:\n"
            "            time.sleep(2)\n            os._exit(0)\n        n += 1\nexcept OSError:\n    sys.exit(3)\n")
    r = run_program(code, SandboxLimits(timeout_s=8, processes=4), guard=False)
    assert r.status == ("failed" if sandbox_report().nproc_binds else "passed")


def test_memory_and_file_size_limits():
    assert run_program("x = bytearray(3 << 30)", FAST, guard=False).status == "failed"
    r = run_program("open('big', 'w').write('x' * (4 << 20))", SandboxLimits(timeout_s=3, file_bytes=1 << 20), guard=False)
    assert r.status == "failed" and "File too large" in r.stderr_tail


def test_score_code_counts_malicious_and_hanging_completions_as_failures():
    item = CodeItem("t0", "def add(a, b):\n", "def check(f):\n    assert f(2, 3) == 5\n", "add")
    completions = [["    return a + b\n", "    while True: pass\n", "    import os\n    os.fork()\n    return a + b\n",
                    "    return a - b\n"]]
    res = score_code([item], completions, ks=(1, 2), limits=SandboxLimits(timeout_s=1.5, cpu_s=5))
    assert res.statuses == [["passed", "timeout", "failed", "failed"]]
    assert res.passed == [1]
    assert res.pass_at[1] == pytest.approx(0.25) and res.pass_at[2] == pytest.approx(0.5)


def test_pass_at_k_is_the_unbiased_estimator():
    for n, c, k in [(10, 3, 1), (10, 3, 5), (20, 0, 3), (5, 5, 2), (7, 2, 6), (200, 13, 10)]:
        expected = 1.0 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
