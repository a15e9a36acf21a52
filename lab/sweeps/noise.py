"""The evaluation's noise study: FID and KID against N, with their sd over resamples (issue 13).

``python -m lab noise --data fashion_mnist --out results/eval_noise`` scores held-out real images (the validation
split) against the cached reference of the training split (the one generator runs use: same data, same
``--reference-limit``, so the same cache entry), at every N of ``--sizes``, ``--resamples`` times each (subsets
drawn without replacement from a pool of the first ``--pool`` validation images). Inception runs once per image:
the features of the pool and of the reference are cached and every resample is drawn from them, so the study
costs the features of the images not cached yet (~0.3 s per image per CPU core) plus the FID / KID arithmetic.
With ``--run RUN_DIR`` (repeatable) it also generates the largest N from that generator run once (conditioned on
the validation labels, as its gFID) and resamples its samples the same way: the evaluation's own sd for that run.

Writes ``OUT/<data>.csv`` (one row per set and N), ``OUT/<data>.json`` (the command, the machine, the reference,
the times) and ``OUT/report.md`` (every data set in OUT, with its command and machine).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lab.metrics import fid_protocol as P
from lab.core.registry import ConfigError
from lab.data.datasets import ImageDataModule
from lab.generation.sampling import sample_images
from lab.models.text import encode_text
from lab.runtime.machine import cpu_model
from lab.stages.generator import load_generator
from lab.stages.generator_eval import sample_opts

COLUMNS = ["set", "n", "resamples", "pool", "fid_mean", "fid_sd", "kid_mean", "kid_sd", "kid_subset_sd", "seconds"]
IMAGES_PER_S = 6.5  # Inception on 2 Zen 4 cores (fp32 TorchScript): the estimate printed before any work


def resample_scores(feats: P.FeatureSet, ref: P.FeatureSet, sizes: list[int], resamples: int, *,
                    kid_subsets: int, kid_subset_size: int, label: str) -> list[dict]:
    """FID / KID of ``resamples`` random subsets (without replacement) of ``feats`` at every N of ``sizes``."""
    rows = []
    for n in sizes:
        if n > feats.n:
            continue
        t0 = time.perf_counter()
        fids, kids, kid_sds = [], [], []
        for r in range(resamples):
            g = torch.Generator().manual_seed(1_000_003 * r + n)
            sub = feats.subset(torch.randperm(feats.n, generator=g)[:n])
            s = P.score(sub, ref, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=r)
            fids.append(s["fid"])
            kids.append(s["kid"])
            kid_sds.append(s["kid_std"])
        f, k = torch.tensor(fids, dtype=torch.float64), torch.tensor(kids, dtype=torch.float64)
        rows.append({"set": label, "n": n, "resamples": resamples, "pool": feats.n, "fid_mean": float(f.mean()),
                     "fid_sd": _sd(f), "kid_mean": float(k.mean()), "kid_sd": _sd(k),
                     "kid_subset_sd": sum(kid_sds) / len(kid_sds), "seconds": time.perf_counter() - t0})
        r_ = rows[-1]
        print(f"  {label:<28} N={n:<6} FID {r_['fid_mean']:8.2f} ± {r_['fid_sd']:.2f}   "
              f"KID {r_['kid_mean']:.5f} ± {r_['kid_sd']:.5f}   ({r_['seconds']:.0f} s)", flush=True)
    return rows


@torch.no_grad()
def generate(run_dir: Path, dm: Any, n: int, device: Any = "cpu") -> torch.Tensor:
    """``n`` images (uint8) from a generator run, conditioned on the first ``n`` validation images' labels or
    captions, batch by batch with the seeds its gFID uses."""
    module, cfg = load_generator(run_dir)
    module.to(device)
    model, out, seen = module.model, [], 0
    for i, batch in enumerate(dm.ordered_loader("validation")):
        if seen >= n:
            break
        take = min(batch["image"].shape[0], n - seen)
        cond = {}
        if model.cond_kind == "class":
            cond["labels"] = batch["label"][:take].to(device)
        elif model.cond_kind == "text":
            cond["text"] = tuple(t.to(device) for t in encode_text(list(batch["caption"][:take])))
        imgs = sample_images(model, module.head, module.tokenizer, batch_size=take, opts=sample_opts(cfg, seed=i), **cond)
        out.append(P.to_uint8(imgs).cpu())
        seen += take
    return torch.cat(out)


def _sd(t: torch.Tensor) -> float:
    return float(t.std()) if t.numel() > 1 else float("nan")  # one resample: no sd


def _cpu_model() -> str:
    return cpu_model()


def _uncached(images: torch.Tensor) -> int:
    """How many of ``images`` need Inception (0 when their features are cached)."""
    path = P.fid_cache_dir() / "features" / f"{P.images_key(images)}-{images.shape[0]}.pt"
    return 0 if path.is_file() else int(images.shape[0])


def _uncached_prefix(split: torch.Tensor, n: int) -> int:
    """How many of ``split[:n]`` the split's prefix cache lacks."""
    path = P.fid_cache_dir() / "features" / f"prefix-{P.images_key(split)}.pt"
    have = torch.load(path, map_location="cpu").shape[0] if path.is_file() else 0
    return max(0, n - have)


def run_study(args: argparse.Namespace) -> Path | None:
    run_dirs = [Path(r) for r in args.run or []]
    for r in run_dirs:
        if not r.exists():
            raise ConfigError(f"--run {r} does not exist: give a generator run directory (runs/<NAME>/<run-id>).")
    node: dict[str, Any] = {"name": args.data}
    if args.data_limit is not None:
        node["limit"] = args.data_limit
    dm = ImageDataModule(node, batch_size=args.batch_size, image_size=args.image_size)
    dm.setup()
    val, train = dm.splits["validation"].images, dm.splits["train"].images
    pool_n = min(args.pool or max(args.sizes), len(val))
    sizes = sorted({n for n in args.sizes if P.MIN_SAMPLES <= n <= pool_n})
    if not sizes:
        raise ConfigError(f"--sizes {args.sizes}: none lies between {P.MIN_SAMPLES} and the pool of {pool_n} "
                          f"held-out images ({args.data} has {len(val)} validation images).")
    idx = P.reference_subset(len(train), args.reference_limit)
    run_n = min(args.run_samples or max(sizes), pool_n)
    if idx.numel() < len(train):  # a limited reference: a prefix of a fixed permutation, cached as it grows
        need = _uncached_prefix(train[P.reference_permutation(len(train))], idx.numel())
    else:
        need = _uncached(train)
    if not args.reference_only:
        need += _uncached_prefix(val, pool_n) + len(run_dirs) * run_n
    print(f"noise study on {args.data}: reference {idx.numel()} of {len(train)} training images, pool {pool_n} "
          f"validation images, N = {sizes}, {args.resamples} resamples; Inception needed for {need} images "
          f"(~{need / IMAGES_PER_S / 60:.0f} min at {IMAGES_PER_S} images/s on 2 cores)", flush=True)
    t_start = time.perf_counter()
    t0 = time.perf_counter()
    ref, ref_info = P.reference(train, split="train", data=args.data, limit=args.reference_limit)
    if args.reference_only:  # warm the cache before a suite: its first run then pays only for its own images
        print(f"cached the reference: {ref_info} ({time.perf_counter() - t0:.0f} s)")
        return None
    pool = P.prefix_features(val, pool_n, what=f"{args.data} validation (noise-study pool)")
    features_s = time.perf_counter() - t0
    kw = {"kid_subsets": args.kid_subsets, "kid_subset_size": args.kid_subset_size}
    rows = resample_scores(pool, ref, sizes, args.resamples, label="real (validation)", **kw)
    runs_meta = []
    for r in run_dirs:
        t0 = time.perf_counter()
        imgs = generate(r, dm, run_n)
        gen_s = time.perf_counter() - t0
        feats = P.features_of(imgs, what=f"samples of {r}", cache=False)
        runs_meta.append({"run": str(r), "n": int(imgs.shape[0]), "generate_s": gen_s,
                          "inception_s": time.perf_counter() - t0 - gen_s})
        rows += resample_scores(feats, ref, [n for n in sizes if n <= imgs.shape[0]], args.resamples,
                                label=f"run:{r.name}", **kw)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"{args.data}.csv"
    new_sets = {row["set"] for row in rows}
    old = _read_csv(csv_path) if args.keep_other_sets else []
    rows = [r for r in old if r["set"] not in new_sets] + rows
    _write_csv(csv_path, rows)
    meta = {"data": args.data, "command": args.command_line, "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "reference": ref_info,
            "pool": pool_n, "sizes": sizes, "resamples": args.resamples, **kw, "runs": runs_meta,
            "features_s": features_s, "total_s": time.perf_counter() - t_start}
    (out / f"{args.data}.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "report.md").write_text(report(out))
    print(f"wrote {csv_path}, {out / 'report.md'}")
    return csv_path


def _read_csv(path: Path) -> list[dict]:
    import csv

    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k in COLUMNS[1:]:
            r[k] = float(r[k]) if k not in ("n", "resamples", "pool") else int(r[k])
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in COLUMNS})


def report(out: Path) -> str:
    """report.md from every ``<data>.json`` + ``<data>.csv`` pair in ``out``."""
    lines = ["# Evaluation noise study", "",
             "FID and KID (torchmetrics' definition) of N images against the reference of the training split, "
             "mean ± sd over resamples (subsets of N drawn without replacement from a fixed pool; as N nears the "
             "pool, the resamples overlap and the sd shrinks towards 0: read the sd where N is well below the pool). "
             "`real (validation)`: held-out real images, disjoint from the reference (the floor of every gFID at "
             "that N); `run:<id>`: a generator's own samples. `kid_subset_sd`: KID's sd over its subsets within "
             "one evaluation (what metrics.json's `kid_std` reports). Written by `lab/sweeps/noise.py`.", ""]
    for meta_path in sorted(out.glob("*.json")):
        meta = json.loads(meta_path.read_text())
        rows = _read_csv(meta_path.with_suffix(".csv"))
        ref = meta["reference"]
        lines += [f"## {meta['data']}", "", f"Command: `{meta['command']}`", "",
                  f"Machine: {meta['cpu']} ({meta['cpu_count']} cores, {meta['torch_threads']} torch threads), "
                  f"torch {meta['torch']}, {meta['date']}. Reference: {ref['count']} of {ref['of']} training images "
                  f"(seeded subset when fewer). Pool: the first {meta['pool']} validation images. KID: "
                  f"{meta['kid_subsets']} subsets of min({meta['kid_subset_size']}, N). Time: {meta['total_s']:.0f} s "
                  f"in all, of which {meta['features_s']:.0f} s for the reference and pool features (0 when cached).", ""]
        for r in meta.get("runs", []):
            lines.append(f"Run `{r['run']}`: {r['n']} samples generated in {r['generate_s']:.0f} s, their Inception "
                         f"features in {r['inception_s']:.0f} s.")
        lines += ["", "| set | N | resamples | FID mean | FID sd | KID mean | KID sd | KID subset sd |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['set']} | {r['n']} | {r['resamples']} | {r['fid_mean']:.2f} | {r['fid_sd']:.2f} | "
                         f"{r['kid_mean']:.5f} | {r['kid_sd']:.5f} | {r['kid_subset_sd']:.5f} |")
        lines.append("")
    return "\n".join(lines)


def cmd_noise(args: argparse.Namespace) -> None:
    if args.resamples < 1 or args.kid_subsets < 1 or args.kid_subset_size < 2:
        raise ConfigError(f"--resamples {args.resamples}, --kid-subsets {args.kid_subsets}, --kid-subset-size "
                          f"{args.kid_subset_size}: give at least 1, 1 and 2.")
    if args.reference_limit is not None and args.reference_limit < P.MIN_SAMPLES:
        raise ConfigError(f"--reference-limit {args.reference_limit}: give 'none' or at least {P.MIN_SAMPLES}.")
    args.command_line = " ".join(["python -m lab", *(shlex.quote(a) for a in sys.argv[1:])])
    run_study(args)

