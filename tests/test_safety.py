"""Nothing lost, nothing silently wrong, no code run from a file (issue 15): crafted checkpoints, path escapes,
resume of another configuration, report overwrites. Every case: exit code 2, one paragraph naming the problem,
nothing written."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def lab(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def assert_refused(r: subprocess.CompletedProcess, *expected: str, code: int = 2) -> str:
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr[-2000:]
    for e in expected:
        assert e in errors[0], (e, errors[0])
    return errors[0]


def snapshot(d: Path) -> dict:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in Path(d).rglob("*") if p.is_file()} if Path(d).exists() else {}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One finished smoke quickstart run (4 steps), shared by the tests of this file: -> its run directory."""
    runs = tmp_path_factory.mktemp("safety") / "runs"
    r = lab("run", "quickstart", "preset=smoke", f"runs_dir={runs}", "run_id=tiny")
    assert r.returncode == 0, r.stderr[-3000:]
    return runs / "quickstart" / "tiny"


class Payload:
    """Unpickling this creates ``marker``: the code a crafted checkpoint would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_checkpoint_is_refused_and_its_code_never_runs(tiny_run, tmp_path):
    marker = tmp_path / "payload-ran"
    ckpt = torch.load(tiny_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["cfg"]["extra"] = Payload(marker)
    runs = tmp_path / "runs"
    evil = runs / "quickstart" / "evil"
    (evil / "checkpoints").mkdir(parents=True)
    (evil / "config.yaml").write_text((tiny_run / "config.yaml").read_text())
    torch.save(ckpt, evil / "checkpoints" / "last.ckpt")
    before = snapshot(runs)

    r = lab("sample", str(evil), "--n", "1")
    assert_refused(r, "Refusing to load", "weights_only=True")
    r = lab("run", "quickstart", "preset=smoke", f"runs_dir={runs}", "run_id=evil", "resume=true")
    assert_refused(r, "Refusing to load", str(evil / "checkpoints" / "last.ckpt"))
    r = lab("run", "generator/c2i_fashion", "preset=smoke", f"runs_dir={runs}", f"tokenizer_from={evil}")
    assert_refused(r, "Refusing to load")
    assert not marker.exists()
    assert snapshot(runs) == before
