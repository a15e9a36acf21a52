"""The ``python -m lab noise`` command line (its work is in lab/sweeps/noise.py, imported only when the command runs, so
``python -m lab --help`` and ``list`` stay instant)."""
from __future__ import annotations

import argparse


def cmd_noise(args: argparse.Namespace) -> None:
    from lab.sweeps.noise import cmd_noise as run  # torch and Inception load with the command

    run(args)


def _limit(v: str) -> int | None:
    return None if v.lower() in ("none", "null", "all") else int(v)


def register(sub) -> None:
    p = sub.add_parser("noise", help="FID / KID against N with the sd over resamples (the evaluation's noise floor)")
    p.add_argument("--data", default="fashion_mnist", help="data set name (data.name), e.g. fashion_mnist, emoji32")
    p.add_argument("--sizes", default="100,200,500,1000,2000,5000",
                   type=lambda s: [int(x) for x in s.split(",") if x], help="the N to score (capped at the pool)")
    p.add_argument("--resamples", type=int, default=5)
    p.add_argument("--pool", type=int, default=None,
                   help="held-out images whose features are computed (default: the largest N, capped at the split)")
    p.add_argument("--reference-limit", type=_limit, default=5000,
                   help="reference = a seeded subset of this many training images (base.yaml eval.fid_reference_limit); "
                        "'none': all")
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--kid-subset-size", type=int, default=1000)
    p.add_argument("--run", action="append", default=None, help="a generator run directory: resample its own samples")
    p.add_argument("--run-samples", type=int, default=None,
                   help="samples generated per --run (default: the largest N); resampled like the real pool")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64, help="generation batch (with --run)")
    p.add_argument("--data-limit", type=int, default=None, help="data.limit (tests: a tiny study)")
    p.add_argument("--keep-other-sets", action=argparse.BooleanOptionalAction, default=True,
                   help="keep the rows of sets this invocation does not recompute (e.g. another run's)")
    p.add_argument("--reference-only", action="store_true",
                   help="only compute and cache the reference (the one generator runs with the same data and "
                        "eval.fid_reference_limit use), then stop")
    p.add_argument("--out", default="results/eval_noise")
    p.set_defaults(func=cmd_noise)
