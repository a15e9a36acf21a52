"""One run of one experiment: run directory, Lightning Trainer, fit, final evaluation, metrics.json.

Every run writes ``runs/<NAME>/<run-id>/`` with ``config.yaml`` (resolved), ``metrics.json``,
``checkpoints/`` (last + best) and TensorBoard events, and never writes into another run's directory.
"""
from __future__ import annotations

import json
import time
import warnings
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from lab.config import ROOT, save_config, to_dict
from lab.data import ImageDataModule
from lab.machine import metrics_record, resolve_precision, resolve_run_settings
from lab.metrics import count_params, peak_memory_mb, reset_peak_memory, train_step_flops
from lab.registry import ConfigError


# Our EpochSampler (lab/data.py) resumes mid-epoch exactly, which Lightning cannot see: silence its warning.
warnings.filterwarnings("ignore", ".*resuming from a checkpoint that ended before the epoch ended.*")


def runs_root(cfg: Any) -> Path:
    root = Path(cfg["runs_dir"])
    return root if root.is_absolute() else ROOT / root


def process_rank() -> int:
    """This process's rank under a multi-process launch (Lightning DDP sets LOCAL_RANK / RANK in children)."""
    import os

    for var in ("RANK", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def make_run_dir(cfg: Any) -> tuple[Path, bool]:
    """(run directory, resuming?). A new run never reuses an existing directory. Rank 0 decides it; the other
    ranks of a multi-process run (launched from rank 0 by Lightning) inherit it and create nothing."""
    import os

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # a later stage of a multi-process run (the group outlives the first stage's Trainer): ask rank 0
        box = [_make_run_dir(cfg) if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(box, src=0)
        run_dir, resuming = box[0]
        os.environ["BITLAB_RUN_DIR"] = str(run_dir)
        return run_dir, resuming
    if process_rank() > 0 and os.environ.get("BITLAB_RUN_DIR"):
        return Path(os.environ["BITLAB_RUN_DIR"]), bool(cfg["resume"])
    run_dir, resuming = _make_run_dir(cfg)
    os.environ["BITLAB_RUN_DIR"] = str(run_dir)  # for the ranks Lightning is about to launch
    return run_dir, resuming


def _make_run_dir(cfg: Any) -> tuple[Path, bool]:
    from lab.runlock import check_resume, lock_run

    base = runs_root(cfg) / cfg["name"]
    if cfg["resume"]:
        if cfg["run_id"]:
            run_dir = base / str(cfg["run_id"])
        else:
            candidates = sorted(p.parent.parent for p in base.glob("*/checkpoints/last.ckpt"))
            if not candidates:
                raise ConfigError(f"resume=true but no run of '{cfg['name']}' has a checkpoint under {base}/*/checkpoints/last.ckpt.")
            run_dir = max(candidates, key=lambda p: (p / "checkpoints" / "last.ckpt").stat().st_mtime)
        if not (run_dir / "checkpoints" / "last.ckpt").is_file():
            raise ConfigError(f"resume=true but {run_dir}/checkpoints/last.ckpt does not exist.")
        lock_run(run_dir)  # held until the run ends: a second resume of it (or a sweep) is refused meanwhile
        check_resume(cfg, run_dir)
        return run_dir, True
    run_id = cfg["run_id"] or f"{datetime.now():%Y%m%d-%H%M%S}-s{cfg['seed']}"
    run_dir = base / str(run_id)
    if cfg["run_id"] and run_dir.exists():
        raise ConfigError(f"run_id={run_id} already exists at {run_dir}; a run never overwrites another. Pick another run_id or resume=true.")
    n = 1
    while run_dir.exists():  # two runs started in the same second
        n += 1
        run_dir = base / f"{run_id}-{n}"
    run_dir.mkdir(parents=True)
    lock_run(run_dir)
    return run_dir, False


def check_checkpoint_matches(module: pl.LightningModule, ckpt: Path) -> None:
    """Before resuming: the checkpoint's tensors must have exactly the model's names and shapes. A checkpoint
    from another configuration is refused, naming the first differences; it is never loaded non-strictly."""
    from lab.safety import load_checkpoint

    ckpt_data = load_checkpoint(ckpt)  # weights_only: a crafted file is refused before any of it runs
    state = ckpt_data.get("state_dict") if isinstance(ckpt_data, dict) else None
    if not isinstance(state, dict):
        raise ConfigError(f"{ckpt} is not a Lightning checkpoint (no state_dict).")
    own = module.state_dict()
    problems = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems += [f"{k}: missing from the checkpoint" for k in own if k not in state]
    problems += [f"{k}: in the checkpoint, not in the model" for k in state if k not in own]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ConfigError(
            f"The checkpoint {ckpt} comes from a different configuration: {'; '.join(problems[:3])}{more}. "
            "Resume with the configuration it was trained with (its config.yaml), or start a new run."
        )


def build_datamodule(cfg: Any) -> ImageDataModule:
    data = dict(to_dict(cfg["data"]))
    loader = cfg["loader"]
    return ImageDataModule(
        data, batch_size=loader["batch_size"], num_workers=loader["num_workers"],
        image_size=loader["image_size"], seed=cfg["seed"],
    )


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` to a file named for this process, then rename it over ``path``: readers never see a partial
    file, a run killed while saving keeps the previous one, and ranks of a multi-process run that write the same
    cache entry do not trip over each other's temp file."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


@contextmanager
def exclusive(lock_path: Path, waiting: str = ""):
    """Hold an advisory lock (``flock``) on ``lock_path`` for the block, in rank 0 only (the other ranks of a
    multi-process run follow rank 0). Two sweep invocations that need the same uncached tokenizer thus train it
    once: the second waits, then finds it finished. The OS releases the lock when its process dies."""
    import fcntl

    if process_rank() > 0:
        yield
        return
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                print(waiting, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file and renamed over the old one: a run killed while saving
    (SIGKILL, power loss) keeps its previous checkpoint intact instead of a truncated one."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Any = None) -> None:
        atomic_write(Path(path), lambda tmp: super(AtomicCheckpointIO, self).save_checkpoint(checkpoint, tmp, storage_options))


class StepTimer(pl.Callback):
    """Wall time of each training batch (forward, backward, optimiser; validation and checkpoints excluded),
    synchronised with the GPU when there is one: the throughput figure of metrics.json."""

    def __init__(self):
        self.times: list[float] = []
        self._t0 = 0.0

    def _sync(self, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._sync(pl_module)
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync(pl_module)
        self.times.append(time.perf_counter() - self._t0)

    def summary(self, batch_size: int, world_size: int = 1) -> dict:
        """Median step time after the first 10% of steps (warm-up), and images/s over every process."""
        t = sorted(self.times[len(self.times) // 10:]) or [float("nan")]
        med = t[len(t) // 2]
        return {"train_step_ms": 1e3 * med, "train_images_per_s": batch_size * world_size / med}


def timer_of(trainer: pl.Trainer) -> StepTimer | None:
    return next((c for c in trainer.callbacks if isinstance(c, StepTimer)), None)


def cpu_load() -> float:
    """1-minute load average divided by the core count (this run's own threads included): ~1 or more means
    the cores were busy, and a training job sharing them with another torch job can run several times slower."""
    import os

    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (OSError, AttributeError):  # no load average on this platform
        return float("nan")


def warn_if_cpu_busy(trainer_kw: dict) -> None:
    import os

    load = cpu_load()
    if trainer_kw.get("accelerator", "cpu") == "cpu" and load > 0.75:  # (nan where there is no load average)
        print(f"note: the CPU is already busy (1-minute load {load * (os.cpu_count() or 1):.1f} on {os.cpu_count()} cores). Two torch jobs "
              "that each use every core slow each other down several-fold; run one at a time, or give each "
              "OMP_NUM_THREADS=1. Timings of this run will not be comparable to an idle machine's.", flush=True)


def share_cpu_threads(trainer_kw: dict) -> int | None:
    """Several training processes on one CPU (``accelerator: cpu``, ``devices: N``): each takes 1/N of the
    cores for its torch threads, unless OMP_NUM_THREADS says otherwise. Every process would otherwise start
    one thread per core, and N processes oversubscribing the cores run several times slower. Returns the
    thread count set (None: unchanged)."""
    import os

    devices = trainer_kw.get("devices", 1)
    if trainer_kw.get("accelerator", "cpu") != "cpu" or not isinstance(devices, int) or devices < 2:
        return None
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    n = max(1, (os.cpu_count() or 1) // devices)
    torch.set_num_threads(n)
    return n


def build_trainer(cfg: Any, run_dir: Path, extra_callbacks: list | None = None) -> pl.Trainer:
    from lab import quiet

    quiet.install()  # known-harmless warnings and Lightning's tips hidden unless --verbose
    trainer_kw = dict(to_dict(cfg["trainer"]))
    if str(trainer_kw.get("precision")) == "auto":  # a caller that skipped resolve_run_settings: Lightning needs a value
        trainer_kw["precision"] = resolve_precision("auto", trainer_kw.get("accelerator", "cpu"), str(cfg["stage"]))[0]
    warn_if_cpu_busy(trainer_kw)
    share_cpu_threads(trainer_kw)
    ckpt_dir = run_dir / "checkpoints"
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1,
                           auto_insert_metric_name=False)
    last = ModelCheckpoint(dirpath=ckpt_dir, filename="last-step", save_last=True,
                           every_n_train_steps=cfg["checkpoint_every_n_steps"], save_top_k=0,
                           enable_version_counter=False)  # always last.ckpt, never a stray last-v1.ckpt on resume
    from lab.tracking import build_loggers

    loggers = build_loggers(cfg, run_dir)  # `logger:` in the config: tensorboard (default), csv, wandb, mlflow
    lr = [LearningRateMonitor(logging_interval="step")] if loggers else []
    return pl.Trainer(
        **trainer_kw,
        logger=loggers or False,
        callbacks=[best, last, quiet.ProgressBar(refresh_rate=10), StepTimer()] + lr + list(extra_callbacks or []),
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
        enable_model_summary=False,
        deterministic=bool(cfg["deterministic"]) or None,
    )


def write_metrics(run_dir: Path, metrics: dict) -> None:
    atomic_write(run_dir / "metrics.json", lambda tmp: tmp.write_text(json.dumps(metrics, indent=2, default=float)))


HEADLINE = ("psnr", "ssim", "lpips", "rfid", "bit_entropy", "codebook_usage", "baseline_psnr", "baseline_lpips",
            "val_loss", "bit_accuracy", "token_accuracy", "gfid", "params", "head_params", "wall_time_s", "peak_memory_mb")


def summary(run_dir: Path, metrics: dict) -> str:
    lines = [f"run: {run_dir}"]
    for k in HEADLINE:
        if k in metrics:
            v = metrics[k]
            lines.append(f"  {k:<16} {v:.4g}" if isinstance(v, float) else f"  {k:<16} {v}")
    lines.append(f"  outputs: {run_dir}/metrics.json, {run_dir}/checkpoints/, TensorBoard: {run_dir}/tb")
    return "\n".join(lines)


def run_experiment(cfg: DictConfig) -> tuple[Path, dict]:
    """Train and evaluate one run of ``cfg``; return (run directory, final metrics)."""
    from lab.runlock import released_after

    with released_after():  # the run's lock (lab/runlock.py) is held until here
        if cfg["stage"] == "generator":
            from lab.generator_run import run_generator  # noqa: PLC0415 - the generator stage is heavier

            return run_generator(cfg)
        return run_tokenizer(cfg)


def seed_all(cfg: Any) -> None:
    pl.seed_everything(int(cfg["seed"]), workers=True, verbose=False)
    if cfg["deterministic"]:
        torch.use_deterministic_algorithms(True, warn_only=True)


def run_tokenizer(cfg: DictConfig) -> tuple[Path, dict]:
    from lab.evaluate import evaluate_tokenizer, format_per_scale
    from lab.modules import TokenizerModule

    resolve_run_settings(cfg)  # trainer.precision / devices: auto -> concrete values, recorded in cfg.resolved
    seed_all(cfg)
    dm = build_datamodule(cfg)
    dm.setup("fit")  # data problems surface before a run directory exists
    from lab.fid_protocol import check_eval_size

    check_eval_size(cfg["eval"]["fid_samples"], len(dm.splits["validation"]))
    module = TokenizerModule(to_dict(cfg))
    if cfg["compile"]:
        module.tokenizer.compile()  # in place: parameter names (and checkpoints) are unchanged
    run_dir, resuming = make_run_dir(cfg)
    if not resuming and process_rank() == 0:
        save_config(cfg, run_dir / "config.yaml")
    reset_peak_memory()
    t0 = time.time()
    ckpt = str(run_dir / "checkpoints" / "last.ckpt") if resuming else None
    if ckpt:
        check_checkpoint_matches(module, Path(ckpt))
    from lab.signals import Interruption

    trainer = build_trainer(cfg, run_dir, [Interruption(run_dir)])  # SIGTERM / SIGINT: checkpoint, clean exit
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    train_time = time.time() - t0
    train_peak = peak_memory_mb()  # training alone; peak_memory_mb below also covers the evaluation
    metrics: dict[str, Any] = {}
    module.adopt_ema()  # from here on, module.tokenizer is the evaluated (averaged) one
    if trainer.is_global_zero:
        ev = cfg["eval"]
        module.to(eval_device(cfg))
        metrics = evaluate_tokenizer(
            module.tokenizer, dm.val_dataloader(), batches=ev["batches"], fid_samples=ev["fid_samples"],
            lpips=module.metric_lpips, device=module.device, protocol=ev,
        )
        metrics.update(
            params=count_params(module.tokenizer), steps=int(trainer.global_step),
            wall_time_s=time.time() - t0, train_time_s=train_time, peak_memory_mb=peak_memory_mb(), train_peak_memory_mb=train_peak, cpu_load=cpu_load(),
            flops_per_step=step_flops(module, dm), steps_planned=int(cfg["trainer"]["max_steps"]), **metrics_record(cfg),
            **timer_of(trainer).summary(cfg["loader"]["batch_size"], trainer.world_size),
        )
        write_metrics(run_dir, metrics)
        log_final(trainer, cfg, metrics)
        save_grids(module, dm, run_dir, cfg["eval"]["grid_images"])
        print(summary(run_dir, metrics))
        print(format_per_scale(metrics["per_scale"]))
    return run_dir, metrics


def eval_device(cfg: Any) -> torch.device:
    """Where the work outside trainer.fit runs (feature caching, final evaluation, grids): the accelerator the
    trainer uses when it is a GPU (Lightning hands the model back on the CPU after fit), else the CPU."""
    acc = str(cfg["trainer"].get("accelerator", "cpu"))
    if acc in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def step_flops(module: Any, dm: ImageDataModule) -> int:
    """FLOPs of one training step on a training batch (after training: the run's RNG is untouched)."""
    batch = next(iter(dm.train_dataloader()))
    B = len(batch["image"])
    b = min(B, 4)  # FLOPs are linear in the batch: count a slice (a full 256-px batch in fp32 may not fit)
    batch = {k: (v[:b].to(module.device) if torch.is_tensor(v) else v[:b]) for k, v in batch.items()}
    from lab.quantizers.base import local_statistics

    with local_statistics():  # rank 0 alone: no collective may wait for the others
        return int(train_step_flops(module, batch) * B / b)


def save_grids(module: Any, dm: ImageDataModule, run_dir: Path, n: int) -> None:
    """PNG grids beside the metrics: inputs vs reconstructions, and reconstructions from the first k scales."""
    import torchvision

    from lab.modules import image_grid

    x = next(iter(dm.val_dataloader()))["image"][:n].to(module.device)
    tok = module.tokenizer.eval()
    with torch.no_grad():
        prefixes = tok.decode_prefixes(x)
    torchvision.utils.save_image(image_grid([x, prefixes[-1]], n), run_dir / "reconstructions.png")
    torchvision.utils.save_image(image_grid([x] + prefixes, n), run_dir / "progressive.png")


def flat_hparams(cfg: Any, prefix: str = "") -> dict:
    out = {}
    for k, v in (to_dict(cfg) if not isinstance(cfg, dict) else cfg).items():
        if k in ("presets", "sweep", "seeds", "report"):
            continue
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_hparams(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        elif v is not None:
            out[key] = str(v)
    return out


def log_final(trainer: pl.Trainer, cfg: Any, metrics: dict) -> None:
    """Final metrics as scalars and in TensorBoard's HParams view, one view for every stage (lab/tracking.py)."""
    from lab.tracking import log_final as log_to_loggers

    log_to_loggers(trainer, cfg, metrics)
