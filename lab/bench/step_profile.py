"""``make bench`` part ``profile`` (issue 23): where one training step's time goes, per stage, by torch.profiler.

A few training steps (train_loss, backward, gradient clipping, AdamW: lab.bench.machine.stepper's step) of the
quickstart tokenizer and the c2i_fashion generator (size s; emoji32 data, cached encoder features) are profiled
after a warm-up; beside the generator as published (BSQ-16, bitwise head, bitwise self-correction), the same
transformer with a 4,096-way index head on a VQ-4096 and on an FSQ-8^4 tokenizer (ablations/head_index_vs_bitwise's
index-head cases, whose steps differ in time by 1.3x on one machine). Time is attributed to categories by ``record_function`` ranges named ``bitlab::<category>``,
opened around the modules and methods below by forward hooks (or instance-method wrappers) for the profiled steps
only:

==============================  ===========================================================================
category                        what opens it
==============================  ===========================================================================
attention                       every SelfAttention / CrossAttention module of the transformer
MLP                             every transformer Block's ``mlp``
transformer other               the rest of the Transformer (adaLN, norms, embeddings, residual adds)
head                            the generator's head (forward and its ``loss`` method)
teacher forcing                 GeneratorModule.sequence (inputs and labels, bitwise self-correction)
quantizer                       the tokenizer's MultiScaleQuantizer (BSQ, VQ or FSQ, its up/down-sampling and Phi convs)
convolutions                    every nn.Conv2d of the tokenizer's encoder and decoder
encoder/decoder other           the rest of the encoder and decoder (GroupNorm, SiLU, up-sampling)
LPIPS                           the training loss's LPIPS network (its own convolutions included)
data                            the DataLoader's next batch; the generator's cached-feature lookup
optimizer                       gradient clipping, AdamW's step, zero_grad
other (unattributed)            everything else in the step: losses, autocast casts, gradient accumulation,
                                the autograd engine, the profiler's own ranges
==============================  ===========================================================================

An op's own time (its duration less its children's) goes to the innermost category range around it. A backward op
(``autograd::engine::evaluate_function: XBackward``) goes to the category of the forward op that made its autograd
node: the profiler gives both the same sequence number. The categories therefore add up to the profiled step's wall
time exactly, and the unattributed share is reported as such. One process: a multi-process run's DDP all-reduce is
not in this profile (the ``machine`` part measures the layouts). The profiler slows small ops; the ``profile
overhead`` row compares the profiled step's wall time with the same steps unprofiled.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import ExitStack
from typing import Callable, Iterator

import torch
from torch import nn
from torch.autograd.profiler import record_function

from lab.bench.common import Settings, progress, quiet_stderr
from lab.bench.machine import GLOBAL_BATCH, build_stage
from lab.bench.roofline import stamp
from lab.runtime.machine import cpu_processes, resolve_precision

PREFIX = "bitlab::"
STEP = PREFIX + "step"
OTHER = "other (unattributed)"
CATEGORIES = ("attention", "MLP", "transformer other", "head", "teacher forcing", "quantizer", "convolutions",
              "encoder/decoder other", "LPIPS", "data", "optimizer", OTHER)
BACKWARD = "autograd::engine::evaluate_function: "
BETWEEN = "between ops (Python, dispatch)"  # a range's own time: inside it, outside every op


# ------------------------------------------------------------------------------------------ labels
def label_module(module: nn.Module, category: str) -> list:
    """Open ``bitlab::<category>`` around every call of ``module`` (forward pre-hook / forward hook); the handles."""
    stack: list = []

    def enter(m, args):
        r = record_function(PREFIX + category)
        r.__enter__()
        stack.append(r)

    def leave(m, args, out):
        stack.pop().__exit__(None, None, None)

    return [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]


class Labels:
    """Context manager: the category ranges on a module's parts (hooks and method wrappers), removed on exit."""

    def __init__(self):
        self.handles: list = []
        self.methods: list[tuple[object, str]] = []

    def module(self, m: nn.Module, category: str) -> None:
        self.handles += label_module(m, category)

    def method(self, obj: object, name: str, category: str) -> None:
        fn = getattr(obj, name)

        def wrapped(*args, **kwargs):
            with record_function(PREFIX + category):
                return fn(*args, **kwargs)

        setattr(obj, name, wrapped)  # an instance attribute over the class's method: deleted on exit
        self.methods.append((obj, name))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        for obj, name in self.methods:
            delattr(obj, name)
        self.handles, self.methods = [], []


def label_stage(labels: Labels, module: nn.Module) -> None:
    """The ranges of the table above on a TokenizerModule or a GeneratorModule (outer ones first: the innermost
    range around an op is the one that counts)."""
    from lab.models.tokenizer import Decoder, Encoder
    from lab.models.transformer import Block, CrossAttention, SelfAttention, Transformer

    for m in module.modules():
        if isinstance(m, Transformer):
            labels.module(m, "transformer other")
        elif isinstance(m, (Encoder, Decoder)):
            labels.module(m, "encoder/decoder other")
            for conv in m.modules():
                if isinstance(conv, nn.Conv2d):
                    labels.module(conv, "convolutions")
    for m in module.modules():
        if isinstance(m, (SelfAttention, CrossAttention)):
            labels.module(m, "attention")
        elif isinstance(m, Block):
            labels.module(m.mlp, "MLP")
    tok = getattr(module, "tokenizer", None)
    if tok is not None:
        labels.module(tok.msq, "quantizer")
    if hasattr(module, "_lpips"):  # TokenizerModule: the training loss's LPIPS
        labels.module(module._lpips[0], "LPIPS")
    if hasattr(module, "head"):
        labels.module(module.head, "head")
        labels.method(module.head, "loss", "head")
    for name, category in (("sequence", "teacher forcing"), ("batch_features", "data")):
        if hasattr(module, name) and hasattr(module, "head"):
            labels.method(module, name, category)


# ------------------------------------------------------------------------------------------ attribution
def attribute(events) -> tuple[int, float, dict[str, float], dict[str, dict[str, float]], dict[str, float]]:
    """(steps, step wall microseconds, {category: own microseconds}, {category: {op: own microseconds}},
    {category: own microseconds in backward}) over the ``bitlab::step`` ranges of a profile's events
    (``prof.events()``). Backward ops take the category of the
    forward op with their sequence number; the categories add up to the steps' wall time."""
    totals: dict[str, float] = defaultdict(float)
    in_backward: dict[str, float] = defaultdict(float)
    ops: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    forward_category: dict[int, str] = {}
    steps = [e for e in events if e.name == STEP]
    stack = [(e, OTHER, False) for e in reversed(steps)]
    while stack:  # depth first, children in time order: a forward op is seen before its backward
        e, category, backward = stack.pop()
        name = e.name
        if name.startswith(PREFIX) and name != STEP:
            category = name[len(PREFIX):]
        elif name.startswith(BACKWARD) and not backward:
            backward = True
            category = forward_category.get(e.sequence_nr, OTHER)
        elif not backward and e.sequence_nr >= 0:
            # ops that create no autograd node (no-grad, data) also carry the next number: the last op seen with a
            # number is the one whose node took it (the counter moves on after it; its children share its range)
            forward_category[e.sequence_nr] = category
        children = sorted(e.cpu_children, key=lambda c: c.time_range.start)
        own = (e.time_range.end - e.time_range.start) - sum(c.time_range.end - c.time_range.start for c in children)
        totals[category] += own
        in_backward[category] += own if backward else 0.0
        label = BETWEEN if name.startswith(PREFIX) else name + (" (backward)" if backward and not name.startswith(BACKWARD) else "")
        ops[category][label] += own
        stack += [(c, category, backward) for c in reversed(children)]
    wall = sum(e.time_range.end - e.time_range.start for e in steps)
    return len(steps), wall, dict(totals), {k: dict(v) for k, v in ops.items()}, dict(in_backward)


def top_ops(ops: dict[str, float], n: int = 3) -> str:
    total = sum(ops.values()) or 1.0
    best = sorted(ops.items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{name} {100 * us / total:.0f}%" for name, us in best)


# ------------------------------------------------------------------------------------------ steps
def make_step(module: nn.Module, loader, bf16: bool) -> Callable[[], None]:
    """lab.bench.machine.stepper's step (AdamW, clipping at 1.0) with its parts in category ranges."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95))
    module.train()
    state = {"it": iter(loader)}

    def step() -> None:
        with record_function(STEP):
            with record_function(PREFIX + "data"):
                try:
                    batch = next(state["it"])
                except StopIteration:
                    state["it"] = iter(loader)
                    batch = next(state["it"])
            with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = module.train_loss(batch)
                loss = loss[0] if isinstance(loss, tuple) else loss
            loss.backward()
            with record_function(PREFIX + "optimizer"):
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)

    return step


def profile_steps(module: nn.Module, step: Callable[[], None], steps: int) -> tuple[object, float]:
    """(the profile's events, unprofiled seconds per step) of ``steps`` steps with the category ranges on."""
    from torch.profiler import ProfilerActivity, profile

    with Labels() as labels:
        label_stage(labels, module)
        t0 = time.perf_counter()
        for _ in range(steps):  # the same steps unprofiled (record_function costs ~nothing without a profiler)
            step()
        plain = (time.perf_counter() - t0) / steps
        with ExitStack() as stack:
            stack.enter_context(quiet_stderr())
            prof = stack.enter_context(profile(activities=[ProfilerActivity.CPU]))
            for _ in range(steps):
                step()
    return prof.events(), plain


def profile_rows(what: str, module, loader, precision: str, steps: int, warmup: int) -> Iterator[dict]:
    bf16 = precision.startswith("bf16")
    step = make_step(module, loader, bf16)
    for _ in range(warmup):
        step()
    events, plain = profile_steps(module, step, steps)
    n, wall, totals, ops, in_backward = attribute(events)
    base = dict(stamp(torch.get_num_threads()), stage=what, precision=precision, batch=len(next(iter(loader))["image"]))
    ms = wall / 1e3 / max(n, 1)
    yield dict(base, category="step (profiled wall)", ms=ms, pct=100.0, steps=n, unprofiled_ms=1e3 * plain,
               overhead=ms / (1e3 * plain), backward_pct=100 * sum(in_backward.values()) / wall,
               top_ops=f"categories add up to {100 * sum(totals.values()) / wall:.1f}%")
    named = [c for c in CATEGORIES if c in totals and (totals[c] > 0 or c == OTHER)]
    for category in named + sorted(set(totals) - set(CATEGORIES)):  # (a range outside the table: should not happen)
        t = totals[category]
        yield dict(base, category=category, ms=t / 1e3 / n, pct=100 * t / wall,
                   backward_pct=100 * in_backward.get(category, 0.0) / t if t else None, top_ops=top_ops(ops[category]))


def bench_profile(s: Settings) -> Iterator[dict]:
    """The profile of each stage at the per-process batch ``trainer.devices=auto`` gives this machine, the thread
    count the bench runs at (--threads) and the precision ``trainer.precision=auto`` picks for the stage."""
    steps, warmup = (2, 1) if s.quick else (5, 2)
    batch = 4 if s.quick else GLOBAL_BATCH // cpu_processes(GLOBAL_BATCH)[0]
    for what, stage, size, overrides in cases(s.quick):
        progress(f"profile: {what}")
        torch.manual_seed(0)
        module, loader = build_stage(stage, size, batch, s.quick, overrides)
        precision = resolve_precision("auto", "cpu", stage)[0]
        precision = "bf16 autocast" if str(precision).startswith("bf16") else "fp32"
        yield from profile_rows(what, module, loader, precision, steps, warmup)


INDEX_HEAD = ("head.name=index", "correction={name: none}")
INDEX_CASES = (("VQ-4096", ("quantizer={name: vq, codebook_size: 4096}",) + INDEX_HEAD),
               ("FSQ-8^4", ("quantizer={name: fsq, levels: [8, 8, 8, 8]}",) + INDEX_HEAD))


def cases(quick: bool) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(label, stage, generator size, overrides) of the profiled steps; quick: the code paths at size xs, and one
    index-head case (FSQ's: the only quantizer besides BSQ whose teacher forcing differs in kind)."""
    size = "xs" if quick else "s"
    index = INDEX_CASES[1:] if quick else INDEX_CASES
    return ([("tokenizer (quickstart)", "tokenizer", "", ()),
             (f"generator (c2i_fashion, size {size}: BSQ-16, bitwise head)", "generator", size, ())]
            + [(f"generator (size {size}: {q}, index head)", "generator", size, o) for q, o in index])


COLUMNS = [
    ("stage", "stage", "s"), ("precision", "precision", "s"), ("threads", "threads", "i"), ("batch", "batch", "i"),
    ("category", "category", "s"), ("ms", "ms/step", "f"), ("pct", "% of step", "f"), ("backward_pct", "of which backward %", "f"),
    ("unprofiled_ms", "unprofiled ms", "f"),
    ("overhead", "profiled / unprofiled", "x"), ("top_ops", "top ops (own time, % of the category)", "s"),
    ("cpu", "CPU", "s"), ("torch", "torch", "s")]

NOTES = [
    "torch.profiler over a few training steps after a warm-up (train_loss, backward, clipping, AdamW) of untrained "
    "cpu-scale models on emoji32, in one process at the per-process batch trainer.devices=auto gives this machine, "
    "the bench's thread count (--threads) and the precision trainer.precision=auto picks for the stage.",
    "Categories: record_function ranges opened around modules by forward hooks (lab/bench/step_profile.py lists "
    "which); an op's own time goes to the innermost range, a backward op to its forward op's range (same autograd "
    "sequence number). other (unattributed): the rest (losses, casts, gradient accumulation, autograd engine). "
    "A multi-process run's DDP all-reduce is not in this one-process profile.",
    "The profiler slows small ops: profiled / unprofiled compares the profiled steps' wall time with the same "
    "number of steps timed without it; read the shares, not the milliseconds.",
]
