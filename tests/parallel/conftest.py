"""Launching the gloo workers of the parallel tests."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def torchrun(script: Path, nproc: int, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `script` on nproc CPU processes (gloo) under torchrun; fails the test on a non-zero exit."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           str(script), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**env, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="session")
def tp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tp")
    torchrun(Path(__file__).with_name("tp_worker.py"), 2, out)
    return out, json.loads((out / "tp.json").read_text())
