"""Speed settings chosen from the machine a run lands on (issue 12): ``trainer.precision: auto`` and
``trainer.devices: auto`` with ``loader.global_batch_size``.

- precision ``auto``: ``bf16-mixed`` on a CUDA GPU that supports bf16; on a CPU, for the generator stage (a
  transformer: matmul-bound), only where the CPU has native bf16 (``avx512_bf16`` / ``amx_bf16`` in its flags)
  *and* a one-second probe (a (2048 x 256) @ (256 x 1024) matmul under bf16 autocast against fp32) confirms it is
  faster; ``32-true`` otherwise, and for the tokenizer stage on every CPU (its small convs gained nothing from
  bf16 autocast in ``make bench`` even on an AVX512-BF16 CPU, which the matmul probe cannot tell). On a CPU without native
  bf16 torch emulates bf16 matmuls, ~70x slower than fp32 on a Zen 2 (AVX2) box. The probe's result is cached
  per machine (CPU model, torch's CPU capability, torch version) under ``$BITLAB_CACHE`` or ``<repo>/.cache``.
- devices ``auto`` on a CPU: one process per core, each holding at least ``MIN_BATCH_PER_PROCESS`` images of the
  global batch (``make bench`` part ``machine``: on a 2-core Zen 4 two processes of 16 beat one of 32 on both
  cores; on a Zen 2 both layouts took 384 ms, so the rule is never slower than one process on either).

``resolve_settings(placement, loader, ...)`` returns the concrete values (Lightning receives a concrete precision and
an int device count) and the reasons; the stage writes them into its config (lab/stages/common.py
``resolve_run_settings``), whose ``resolved:`` node ``config.yaml`` and ``metrics.json`` record.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from lab.core.registry import ConfigError
from lab.core.settings import LoaderSettings, Placement
from lab.runtime.files import cache_root

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
BF16_NAMES = ("bf16-mixed", "bf16-true", "bf16")
MIN_SPEEDUP = 1.1  # bf16 must beat fp32 by this in the probe: "measurably faster", not within noise
MIN_BATCH_PER_PROCESS = 16  # the smallest per-process batch measured (the quickstart's 2 x 16)
PROBE_SHAPE = (2048, 256, 1024)  # (M, K, N): a transformer-like linear layer, ~1 GFLOP per matmul
_PROBE_ENV = "BITLAB_BF16_PROBE"  # rank 0's probe result, inherited by the ranks Lightning launches


# ------------------------------------------------------------------------------------------ the CPU
def cpu_model() -> str:
    """The CPU's model name with its family and model numbers (``/proc/cpuinfo``; a VM may show only "AMD EPYC",
    and family 23 model 49 is a Zen 2, family 25 model 17 a Zen 4), or what ``platform`` knows."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model") and key not in info:
                    info[key] = value.strip()
                if not line.strip() and info:
                    break  # the first processor's block is enough
    except OSError:
        pass
    if "model name" in info:
        fam = f" (family {info['cpu family']} model {info['model']})" if "cpu family" in info and "model" in info else ""
        return info["model name"] + fam
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_capability() -> str:
    """torch's dispatch level for this CPU (``AVX2``, ``AVX512``, ...). It does not name bf16: Zen 4's AVX512-BF16
    reads ``AVX512`` like a Skylake's, hence the flags in ``native_bf16``."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - older torch
        return "unknown"


def native_bf16() -> tuple[bool, str]:
    """(has native bf16 matmul units, which): ``avx512_bf16`` / ``amx_bf16`` in the flags; where there are no
    flags to read, oneDNN's own bf16 check (true on AVX-512 CPUs, which may emulate: the probe then decides)."""
    flags = cpu_flags()
    if flags:
        found = [f for f in NATIVE_BF16_FLAGS if f in flags]
        return bool(found), "+".join(f.upper().replace("_", "-") for f in found) or f"{cpu_capability()}, no AVX512-BF16/AMX"
    try:
        ok = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001
        ok = False
    return ok, "oneDNN bf16" if ok else f"{cpu_capability()}, no native bf16"


# The libraries whose arithmetic a run's numbers depend on (a new release can change them: vector-quantize-pytorch
# 1.34 changed what its dead-code threshold means), recorded beside the CPU in every run's record and metrics.
VERSIONED = ("torch", "pytorch-lightning", "vector-quantize-pytorch", "torchmetrics", "numpy", "scipy", "lpips")


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine_summary() -> dict:
    """What the bench tables and run records say about the CPU and the libraries."""
    ok, which = native_bf16()
    return {"cpu": cpu_model(), "cpu_capability": cpu_capability(), "native_bf16": ok, "native_bf16_units": which,
            "cpu_cores": usable_cores(), "versions": library_versions()}


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------------------ the probe
def cache_dir() -> Path:
    """``$BITLAB_CACHE`` or ``<repo root>/.cache`` (beside the data and FID caches)."""
    return cache_root()


def probe_key() -> str:
    return f"{cpu_model()} | {cpu_capability()} | torch {torch.__version__}"


def run_probe(seconds: float = 1.0) -> float:
    """fp32 time / bf16-autocast time of the probe matmul on this CPU at the current thread count (> 1: bf16 is
    faster). Alternates the two so that a busy machine slows both alike; each side gets about ``seconds / 2``
    and at least two runs, so a CPU that emulates bf16 (a matmul there takes ~1.3 s) is still bounded."""
    m, k, n = PROBE_SHAPE
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)

    def once(bf16: bool) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            (a @ b).sum()
        return time.perf_counter() - t0

    once(False), once(True)  # warm-up (oneDNN's kernel selection)
    t32: list[float] = []
    t16: list[float] = []
    start = time.perf_counter()
    while len(t32) < 2 or (time.perf_counter() - start < seconds and len(t32) < 50):
        t32.append(once(False))
        t16.append(once(True))
    return sorted(t32)[len(t32) // 2] / sorted(t16)[len(t16) // 2]


def bf16_speedup(refresh: bool = False) -> tuple[float, str]:
    """The probe's bf16 speed-up on this machine and whether it was "measured" now or "cached": measured once per
    machine and cached in ``<cache>/bf16_probe.json`` (and in the environment, for the ranks Lightning launches)."""
    key = probe_key()
    inherited = os.environ.get(_PROBE_ENV, "")
    if not refresh and inherited.startswith(key + "="):
        return float(inherited.rsplit("=", 1)[1]), "cached"
    path = cache_dir() / "bf16_probe.json"
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if not refresh and isinstance(cache.get(key), dict) and "speedup" in cache[key]:
        speedup, source = float(cache[key]["speedup"]), "cached"
    else:
        speedup, source = run_probe(), "measured"
        cache[key] = {"speedup": speedup, "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            tmp.write_text(json.dumps(cache, indent=1))
            os.replace(tmp, path)
        except OSError:  # a read-only cache: the probe simply runs again next time
            pass
    os.environ[_PROBE_ENV] = f"{key}={speedup!r}"
    return speedup, source


# ------------------------------------------------------------------------------------------ precision
def _on_cuda(accelerator: Any) -> bool:
    acc = str(accelerator or "auto").lower()
    return acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())


def _speed_words(speedup: float) -> str:
    return f"{speedup:.2g}x faster than fp32" if speedup >= 1 else f"{1 / speedup:.3g}x slower than fp32"


def resolve_precision(requested: Any, accelerator: Any = "cpu", stage: str = "generator") -> tuple[Any, str]:
    """(the precision Lightning gets, why). ``auto`` becomes ``bf16-mixed`` or ``32-true`` (module docstring; on a
    CPU the tokenizer ``stage`` stays fp32); any other value is kept, with a warning printed when it asks for bf16
    on a CPU that has no native bf16."""
    if str(requested) != "auto":
        if str(requested) in BF16_NAMES and not _on_cuda(accelerator):
            ok, which = native_bf16()
            if not ok:
                speedup, _ = bf16_speedup()
                print(f"warning: trainer.precision={requested} on {cpu_model()} ({which}): bf16 matmuls are emulated "
                      f"here, {_speed_words(speedup)} in a probe matmul. trainer.precision=auto (the default) picks "
                      "fp32 on this CPU.", flush=True)
                return requested, f"explicit; no native bf16 ({which}), probe {_speed_words(speedup)}"
        return requested, f"explicit trainer.precision={requested}"
    if _on_cuda(accelerator):
        if not torch.cuda.is_available():
            return "32-true", "32-true: no CUDA device visible"
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported():
            return "bf16-mixed", f"bf16-mixed: CUDA {name} supports bf16"
        return "32-true", f"32-true: CUDA {name} has no bf16"
    if str(accelerator or "auto").lower() not in ("cpu", "auto"):
        return "32-true", f"32-true: auto picks bf16 only on CUDA and on CPUs with native bf16 (accelerator {accelerator})"
    ok, which = native_bf16()
    if not ok:
        return "32-true", f"32-true: {cpu_model()} has no native bf16 ({which})"
    if stage == "tokenizer":
        # the probe predicts matmul-bound steps (the transformer); the tokenizer's small-conv steps measured no
        # faster under bf16 autocast on an AVX512-BF16 CPU (make bench: 1.01x at batch 64, 0.8-1.08x at 2 x 16)
        return "32-true", (f"32-true: tokenizer stage on a CPU ({which}): its conv steps measured no faster under "
                           "bf16 autocast (make bench part machine); bf16 there only on CUDA")
    speedup, source = bf16_speedup()
    verdict = "bf16-mixed" if speedup >= MIN_SPEEDUP else "32-true"
    return verdict, f"{verdict}: {which}, probe matmul {_speed_words(speedup)} ({source}; bf16 needs >= {MIN_SPEEDUP}x)"


# ------------------------------------------------------------------------------------------ process layout
def cpu_processes(global_batch: int, cores: int | None = None) -> tuple[int, str]:
    """How many training processes ``trainer.devices: auto`` starts on a CPU: one per core, as long as each keeps
    ``MIN_BATCH_PER_PROCESS`` images and the global batch divides evenly."""
    cores = cores or usable_cores()
    n = max(1, min(cores, global_batch // MIN_BATCH_PER_PROCESS))
    while n > 1 and global_batch % n:
        n -= 1
    why = (f"{n} process(es) x {global_batch // n} images: one per core ({cores} cores), at least "
           f"{MIN_BATCH_PER_PROCESS} images each")
    return n, why


def resolve_layout(place: Placement, loader: LoaderSettings) -> tuple[dict, dict, str | None]:
    """(trainer keys, loader keys to set, why) for ``trainer.devices: auto`` and ``loader.global_batch_size``."""
    devices, global_batch = place.devices, loader.global_batch_size
    on_cpu = not _on_cuda(place.accelerator) and str(place.accelerator).lower() in ("cpu", "auto")
    if global_batch is None:
        if str(devices) == "auto" and on_cpu:
            raise ConfigError(
                "trainer.devices=auto on a CPU chooses the number of training processes from the machine, so it needs "
                "loader.global_batch_size (the batch summed over all processes; each process then takes an equal share) "
                "for the result not to depend on the machine. Set loader.global_batch_size=N, or trainer.devices to a number.")
        return {}, {}, None
    if not isinstance(global_batch, int) or global_batch < 1:
        raise ConfigError(f"loader.global_batch_size={global_batch!r} must be a positive integer (or null: loader.batch_size per process).")
    if str(devices) == "auto" and on_cpu:
        n, why = cpu_processes(global_batch)
        out = {"devices": n}
        if str(place.strategy) in ("auto", "ddp") and n == 1:
            out["strategy"] = "auto"
        elif n > 1 and str(place.strategy) == "auto":
            out["strategy"] = "ddp"
        return out, {"batch_size": global_batch // n}, why
    if isinstance(devices, int) and devices > 0:
        n = devices
    elif isinstance(devices, (list, tuple)):
        n = len(devices)
    elif _on_cuda(place.accelerator) and torch.cuda.is_available():
        n = torch.cuda.device_count()  # devices: -1 / auto on GPUs
    else:
        n = 1
    n *= int(place.num_nodes or 1)
    if global_batch % n:
        raise ConfigError(f"loader.global_batch_size={global_batch} does not split evenly over {n} processes "
                          f"(trainer.devices={devices}); choose a multiple of {n}.")
    return {}, {"batch_size": global_batch // n}, f"{n} process(es) x {global_batch // n} images (trainer.devices={devices})"


# ------------------------------------------------------------------------------------------ one run
@dataclass(frozen=True)
class Resolved:
    """What a run's ``auto`` speed settings become on this machine: the ``trainer:`` and ``loader:`` keys to set
    (precision always) and the record of why (a config's ``resolved:`` node, repeated in metrics.json)."""
    trainer: dict
    loader: dict
    record: dict


def resolve_settings(place: Placement, loader: LoaderSettings, prior: Mapping[str, Any] | None,
                     stage: str, verbose: bool = True) -> Resolved:
    """The concrete precision and process layout for a run's ``trainer:`` / ``loader:`` settings, and why; changes
    nothing it is given. ``prior``: what an earlier resolution recorded (the tokenizer stage a generator experiment
    derives, lab/stages/generator.py): a value resolved then keeps its recorded reason (idempotent)."""
    record = dict(prior or {})
    requested = place.precision
    if not (record.get("precision_reason") and str(record.get("precision")) == str(requested)):
        value, why = resolve_precision(requested, place.accelerator, stage)
        record.update(precision_requested=str(requested), precision=value, precision_reason=why)
    t_set, l_set, layout_why = resolve_layout(place, loader)
    if layout_why:
        record.update(devices_requested=str(place.devices), layout_reason=layout_why)
    t_set = {"precision": record["precision"], **t_set}
    devices = t_set.get("devices", place.devices)
    record.update(devices=list(devices) if isinstance(devices, tuple) else devices,
                  batch_size_per_process=l_set.get("batch_size", loader.batch_size), **machine_summary())
    if verbose and os.environ.get("LOCAL_RANK", "0") in ("", "0"):
        print(f"precision: {record['precision_reason']}" + (f"\nlayout: {layout_why}" if layout_why else ""), flush=True)
    return Resolved(t_set, dict(l_set), record)


def metrics_record(resolved: Mapping[str, Any] | None) -> dict:
    """The keys of a run's ``resolved:`` record (``Resolved.record``) that metrics.json repeats."""
    from omegaconf import DictConfig, OmegaConf

    # plain values: metrics.json is written with json (a nested DictConfig, e.g. versions, is not serialisable)
    r = OmegaConf.to_container(resolved) if isinstance(resolved, DictConfig) else dict(resolved or {})
    keys = ("precision", "precision_reason", "devices", "batch_size_per_process", "layout_reason", "cpu",
            "cpu_capability", "native_bf16", "versions")
    return {k: r[k] for k in keys if k in r}
