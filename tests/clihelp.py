"""Helpers for tests that call the CLI in-process: exit code, stdout, stderr; the one-line rule."""

from robustlab.cli import main


def run_cli(capsys, *argv):
    """`robustlab ARGV` in this process: (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    """The single stderr line of a user error (asserts there is exactly one, no traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
