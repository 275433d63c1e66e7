"""Fixtures for driving the `hybridlm` command as a user's script would."""

import pytest

from hybridlm.cli import main


@pytest.fixture
def cli(capsys):
    """cli(*argv) -> (exit code, stdout, stderr) of `hybridlm *argv`, run in this process."""

    def run(*argv):
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _one_line_error(code, out, err, *needles):
    assert code != 0
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hybridlm: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0]


@pytest.fixture(scope="session")
def assert_one_line_error():
    """assert_one_line_error(code, out, err, *needles): a failure is one `hybridlm: error:` line on
    stderr naming every needle, nothing on stdout, no traceback."""
    return _one_line_error
