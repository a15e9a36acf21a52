"""A small process pool that never hangs: ``parallel_map(fn, items)`` for data preparation (emoji rendering).

Why not ``multiprocessing.Pool``: its workers share one queue lock, and an idle worker holds that lock while it
waits for a task; a worker that dies there (killed, out of memory) leaves the lock held, and ``Pool.terminate``
then waits on it forever. Forked workers also inherited the run's SIGTERM handler (lab/runtime/signals.py), so
the SIGTERM of ``terminate`` raised in them instead of ending them. Here each worker has a pipe of its own, starts
with SIGTERM and SIGINT at their defaults (blocked across the fork, so the run's handlers never run in it), and the
parent waits with a timeout on the pipes and on the processes themselves: a worker that dies or stalls is a
``WorkerError`` naming it within ``stall_timeout`` seconds, and every worker is reaped (terminate, then kill).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from multiprocessing.connection import wait
from typing import Any, Callable, Sequence

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
STALL_TIMEOUT_S = 300.0  # no chunk finished for this long: the pool is stuck (one chunk takes ~1 s on a busy core)


class WorkerError(RuntimeError):
    """A worker process died or stalled; the message names it, what it was doing and what to do."""


def _worker(fn: Callable[[Any], Any], conn) -> None:
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_DFL)  # the run's handlers are the parent's, never a worker's
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the parent is gone
            return
        if task is None:
            return
        index, chunk = task
        try:
            conn.send((index, True, [fn(x) for x in chunk]))
        except BaseException as e:  # noqa: BLE001 - handed to the parent, which raises it
            try:
                conn.send((index, False, e))
            except Exception:  # noqa: BLE001 - an exception that does not pickle
                conn.send((index, False, RuntimeError(f"{type(e).__name__}: {e}")))


def _died(proc: Any) -> str:
    code = proc.exitcode
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def reap(procs: Sequence[Any], grace: float = 2.0) -> None:
    """End and join every process: SIGTERM, then SIGKILL for one still alive after ``grace`` seconds."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(grace)


def parallel_map(fn: Callable[[Any], Any], items: Sequence[Any], *, processes: int = 2, chunksize: int = 64,
                 what: str = "the work", stall_timeout: float | None = None,
                 progress: Callable[[int], None] | None = None) -> list:
    """``[fn(x) for x in items]`` in ``processes`` forked workers, in order. ``progress(n)`` after each chunk of n.
    An exception in ``fn`` is raised here as it is; a worker that dies, or no chunk done within ``stall_timeout``
    seconds, is a ``WorkerError``. The workers are always reaped, also on an exception or a signal here."""
    stall = STALL_TIMEOUT_S if stall_timeout is None else stall_timeout
    chunks = [list(items[i:i + chunksize]) for i in range(0, len(items), chunksize)]
    results: list[list | None] = [None] * len(chunks)
    ctx = mp.get_context("fork")
    procs, conns = [], []
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)  # a signal now waits until the worker's defaults are set
    try:
        for _ in range(max(1, min(processes, len(chunks)))):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(fn, child), daemon=True, name=f"bitlab-worker-{len(procs)}")
            p.start()
            child.close()
            procs.append(p)
            conns.append(parent)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    try:
        todo = iter(range(len(chunks)))
        busy: dict[int, int] = {}  # worker -> chunk in flight
        for w, conn in enumerate(conns):
            i = next(todo, None)
            if i is not None:
                conn.send((i, chunks[i]))
                busy[w] = i
        last = time.monotonic()
        while busy:
            ready = wait([conns[w] for w in busy] + [procs[w].sentinel for w in busy], timeout=1.0)
            for w in list(busy):
                if conns[w] in ready:
                    try:
                        index, ok, value = conns[w].recv()
                    except (EOFError, OSError):
                        procs[w].join(1.0)
                        raise WorkerError(_death(what, procs[w], chunks[busy[w]])) from None
                    if not ok:
                        raise value
                    results[index], last = value, time.monotonic()
                    if progress is not None:
                        progress(len(value))
                    i = next(todo, None)
                    if i is None:
                        conns[w].send(None)
                        del busy[w]
                    else:
                        conns[w].send((i, chunks[i]))
                        busy[w] = i
                elif procs[w].sentinel in ready:
                    procs[w].join(1.0)
                    raise WorkerError(_death(what, procs[w], chunks[busy[w]]))
            if busy and time.monotonic() - last > stall:
                raise WorkerError(
                    f"{what}: no worker process finished anything for {stall:.0f} s (processes "
                    f"{', '.join(str(procs[w].pid) for w in busy)} still on it); stopped them. The machine may be "
                    "overloaded or a worker stuck: run the command again (the finished parts are not kept)."
                )
        return [x for chunk in results for x in (chunk or [])]
    finally:
        reap(procs)
        for conn in conns:
            conn.close()


def _death(what: str, proc: Any, chunk: Sequence[Any]) -> str:
    first = str(chunk[0])[:200] if chunk else "?"
    return (f"{what}: worker process {proc.pid} {_died(proc)} while working on {len(chunk)} item(s) from "
            f"{first}; the other workers were stopped. Out of memory or a process killed from outside are the "
            f"usual causes; run the command again (with more free memory), or set {_serial_hint()}.")


def _serial_hint() -> str:
    return f"{SERIAL_ENV}=1 to do it in this process alone"


SERIAL_ENV = "BITLAB_SERIAL_DATA"


def serial_requested() -> bool:
    """``BITLAB_SERIAL_DATA=1``: data preparation runs in the calling process, no workers."""
    return os.environ.get(SERIAL_ENV, "") not in ("", "0")
