"""Fixtures shared across the test tree."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct GGUF. The setup script installs it, so its absence is an
    error with the install command in it, never a skip."""
    from hybridlm.checkpoints.registry import resolve_gguf

    return resolve_gguf("smollm2-135m")


@pytest.fixture(scope="session")
def pydoc_text() -> str:
    """Real prose every Python installation has: the bundled documentation topics."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))
