"""``make bench`` part ``machine``: what ``trainer.precision: auto`` and ``trainer.devices: auto`` (lab/runtime/machine.py)
should choose on this CPU, measured: each stage's training step in fp32 and under bf16 autocast, as one process
on every core and as two DDP processes (gloo, one core each) at the same global batch, then ``auto``'s choices
against the best measured. Every case has a wall-clock budget, so the part ends in bounded time even where bf16
is emulated (a bf16 step of the `s` transformer took over 18 s on a Zen 2 with AVX2 only)."""
from __future__ import annotations

import os
import socket
import time
from typing import Callable, Iterator

import torch

from lab.bench.common import Settings, progress, ratio
import multiprocessing as mp
import statistics
import torch.distributed as dist
from lab.config import load_experiment
from lab.runtime.machine import bf16_speedup, cpu_processes, resolve_precision, usable_cores
from lab.runtime.workers import reap
from lab.stages.common import build_datamodule
from lab.stages.build import generator_module, tokenizer_module

PRECISIONS = ("32-true", "bf16-mixed")
GLOBAL_BATCH = 32  # the quickstart's and the generator experiments' batch per step


def build_stage(stage: str, size: str, batch: int, quick: bool, overrides: tuple[str, ...] = ()):
    """(module, train loader) of an untrained cpu-scale ``stage`` run on emoji32 at ``batch`` images per process;
    ``overrides`` (dotted ``key=value``) change the experiment's quantizer, head or correction."""
    limit = 64 if quick else 256
    common = [f"loader.batch_size={batch}", "loader.global_batch_size=null", "trainer.devices=1",
              "trainer.strategy=auto", "trainer.precision=32-true"]
    if stage == "tokenizer":
        cfg = load_experiment("quickstart", [f"data.limit={limit}"] + common + list(overrides))
    else:
        cfg = load_experiment("generator/c2i_fashion", ["data={name: emoji32, limit: %d}" % limit, f"generator.size={size}"]
                              + common + list(overrides))
    dm = build_datamodule(cfg)
    dm.setup("fit")
    module = tokenizer_module(cfg)
    if stage == "generator":
        tok = module.tokenizer.eval()
        module = generator_module(cfg, tok, num_classes=dm.num_classes)
        with torch.no_grad():
            module.features = {"train": torch.cat([tok.encode(b["image"]) for b in dm.ordered_loader("train")])}
    return module, dm.train_dataloader()


class StepLoss(torch.nn.Module):
    """The training loss as a module's forward, so DistributedDataParallel sees the calls it must hook."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, batch):
        loss = self.module.train_loss(batch)
        return loss[0] if isinstance(loss, tuple) else loss


def stepper(model: torch.nn.Module, loader) -> Callable[[bool], None]:
    """One optimiser step (AdamW, clipping) on the next batch, under bf16 autocast when asked: what
    ``trainer.precision=bf16-mixed`` does on a CPU."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95))
    model.train()
    state = {"it": iter(loader)}

    def step(bf16: bool) -> None:
        try:
            batch = next(state["it"])
        except StopIteration:
            state["it"] = iter(loader)
            batch = next(state["it"])
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    return step


def _any(flag: bool) -> bool:
    """True on every rank when it is true on one (a no-op in one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def timed(step: Callable[[], None], warmup: int, max_steps: int, budget: float) -> tuple[float, int, str]:
    """(seconds per step, timed steps, status): ``warmup`` untimed steps, then steps until ``max_steps`` or
    ``budget`` seconds. When the warm-up alone overran twice the budget its own time per step is returned instead
    (status says so): a case is bounded by about one step beyond its budget, however slow the machine."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    t_warm = (time.perf_counter() - t0) / max(warmup, 1)
    if _any(time.perf_counter() - t0 > 2 * budget):  # (the first step carries one-time costs: some slack)
        return t_warm, 0, f"over budget: the warm-up step ({warmup}) timed instead"
    n, start = 0, time.perf_counter()
    while True:
        step()
        n += 1
        if _any(n >= max_steps or time.perf_counter() - start > budget):
            break
    return (time.perf_counter() - start) / n, n, "ok"


def timed_alternating(step: Callable[[bool], None], warmup: int, max_steps: int, budget: float) -> dict:
    """{precision: (median seconds per step, timed steps, status)} for fp32 and bf16 steps taken in turn, so that a
    busy machine's load falls on both alike and their ratio stays meaningful. Bounded like ``timed``: about twice
    ``budget`` of timed steps, or the warm-up steps alone when they overran that."""
    warm: dict[bool, list[float]] = {False: [], True: []}
    times: dict[bool, list[float]] = {False: [], True: []}
    t0 = time.perf_counter()
    for _ in range(warmup):
        for bf16 in (False, True):
            t = time.perf_counter()
            step(bf16)
            warm[bf16].append(time.perf_counter() - t)
    if _any(time.perf_counter() - t0 > 2 * budget):
        return {p: (statistics.median(warm[p.startswith("bf16")]), 0, f"over budget: the warm-up step ({warmup}) timed instead")
                for p in PRECISIONS}
    start = time.perf_counter()
    while True:
        for bf16 in (False, True):
            t = time.perf_counter()
            step(bf16)
            times[bf16].append(time.perf_counter() - t)
        if _any(len(times[False]) >= max_steps or time.perf_counter() - start > 2 * budget):
            break
    return {p: (statistics.median(times[p.startswith("bf16")]), len(times[False]), "ok") for p in PRECISIONS}


def _measure_both(stage: str, size: str, batch: int, s: Settings, budget: float) -> dict:
    torch.manual_seed(0)
    module, loader = build_stage(stage, size, batch, s.quick)
    model = StepLoss(module)

    if dist.is_available() and dist.is_initialized():
        model = torch.nn.parallel.DistributedDataParallel(model)
    step = stepper(model, loader)
    warmup, max_steps = (1, 3) if s.quick else (2, 30)
    return timed_alternating(step, warmup, max_steps, budget)


def _child(rank: int, world: int, port: int, stage: str, size: str, batch: int, s: Settings, budget: float, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))

    torch.set_num_threads(max(1, usable_cores() // world))  # what lab.stages.run.share_cpu_threads gives each process
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world)
        out = _measure_both(stage, size, batch, s, budget)
    except Exception as e:  # noqa: BLE001 - reported as the case's status
        out = {"error": f"{type(e).__name__}: {e}"}
    if rank == 0:
        queue.put(out)
    if dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawned(world: int, stage: str, size: str, batch: int, s: Settings, budget: float) -> dict:
    """_measure_both in ``world`` DDP processes; bounded: processes still running after the deadline are killed."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_child, args=(r, world, port, stage, size, batch, s, budget, queue), daemon=True)
             for r in range(world)]
    deadline = 120 + 4 * budget  # start-up (imports, data, model) + two precisions of warm-up and budget
    try:
        for p in procs:
            p.start()
        try:
            out = queue.get(timeout=deadline)
        except Exception:  # noqa: BLE001 - queue.Empty: over the deadline
            out = {"error": f"no result within {deadline:.0f} s"}
        for p in procs:
            p.join(timeout=10)
    finally:  # also on a signal here: no process outlives the bench (lab/runtime/workers.py)
        reap([p for p in procs if p.pid is not None])
    return out


def bench_machine(s: Settings) -> Iterator[dict]:
    """Rows: the probe; per stage, {1 process x 32 on every core, 2 processes x 16 on one core each} x {fp32,
    bf16}; then ``auto``'s precision and layout against the best measured (target <= 1.05)."""
    cores = usable_cores()
    budget = 1.0 if s.quick else 8.0
    speedup, source = bf16_speedup()
    auto = {stage: resolve_precision("auto", "cpu", stage) for stage in ("tokenizer", "generator")}
    yield dict(stage="probe", layout="1 process", precision="bf16 / fp32", bf16_speedup=speedup,
               status=f"{source}; auto -> {auto['generator'][1]}")
    world = 2
    chosen_n, layout_why = cpu_processes(GLOBAL_BATCH, cores)
    cases = [("tokenizer", "-")] + ([] if s.quick else [("generator", "s")])  # quick: the code path, briefly
    for stage, size in cases:
        auto_precision = auto[stage][0]
        times: dict[tuple[int, str], float] = {}
        for n in (1, world):
            progress(f"machine: {stage} {size}, {n} process(es)")
            batch = GLOBAL_BATCH // n
            threads = max(1, cores // n)
            if n == 1:
                saved = torch.get_num_threads()
                torch.set_num_threads(cores)  # one process on every core: torch's default in a run
                try:
                    res = _measure_both(stage, size if size != "-" else "", batch, s, budget)
                finally:
                    torch.set_num_threads(saved)
            else:
                res = _spawned(n, stage, size if size != "-" else "", batch, s, budget)
            layout = f"{n} x {batch} images, {threads} thread(s) each" + (" (cores oversubscribed)" if n > cores else "")
            for p in PRECISIONS:
                base = dict(stage=stage, size=size, layout=layout, processes=n, precision=p)
                if "error" in res:
                    yield dict(base, status=f"failed: {res['error'][:200]}")
                    continue
                sec, steps, status = res[p]
                times[n, p] = sec
                yield dict(base, ms_per_step=1e3 * sec, steps=steps, images_per_s=GLOBAL_BATCH / sec,
                           bf16_speedup=ratio(res["32-true"][0], sec) if p != "32-true" else None, status=status)
        if not times:
            continue
        best = min(times, key=times.get)
        for n in sorted({n for n, _ in times}):
            pair = {p: times[n, p] for p in PRECISIONS if (n, p) in times}
            if auto_precision in pair:
                yield dict(stage=stage, size=size, layout=f"{n} process(es)", processes=n, precision=f"auto -> {auto_precision}",
                           ms_per_step=1e3 * pair[auto_precision], vs_best=pair[auto_precision] / min(pair.values()),
                           status=f"auto's precision / best of {{fp32, bf16}} in this layout (target <= 1.05)")
        if (chosen_n, auto_precision) in times:
            t = times[chosen_n, auto_precision]
            yield dict(stage=stage, size=size, layout=f"auto -> {chosen_n} process(es)", processes=chosen_n,
                       precision=f"auto -> {auto_precision}", ms_per_step=1e3 * t, vs_best=t / times[best],
                       status=f"auto's layout and precision / best measured ({best[0]} process(es), {best[1]}; target <= 1.05); {layout_why}")
