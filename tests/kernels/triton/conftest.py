"""Triton kernel tests: on a CPU machine they run in Triton's interpreter, on a GPU compiled.

TRITON_INTERPRET is read when triton is first imported (torch.compile may import it long before
these tests), so tests/conftest.py sets it for the whole run; it is repeated here for runs rooted
in this folder. Without the `[triton]` extra every test here skips and says why.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hybridlm.kernels import triton_support  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def pytest_collection_modifyitems(config, items):
    if triton_support.installed():
        return
    skip = pytest.mark.skip(reason="triton is not installed (pip install 'hybridlm[triton]')")
    for item in items:
        if "kernels/triton" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture
def device():
    return DEVICE
