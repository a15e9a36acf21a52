"""Helpers shared by the tests of the command line's refusals: run ``python -m lab`` in this process and check
that a refusal is one paragraph."""
from __future__ import annotations

import pytest


def run_main(capsys, *args: str) -> tuple[int, str]:
    """``python -m lab ARGS`` in this process (fast: no new interpreter) -> (exit code, stderr)."""
    from lab.__main__ import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(list(args))
    return e.value.code, capsys.readouterr().err


def one_paragraph(code: int, err: str, *expected: str) -> str:
    """Exit code 2 and one ``error:`` paragraph, last, holding every ``expected`` text (anything before it is
    progress output, e.g. a dataset cache being built); no traceback. -> the paragraph."""
    assert code == 2, err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    for e in expected:
        assert e in errors[0], (e, errors[0])
    return errors[0]
