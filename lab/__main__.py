"""Command line: ``python -m lab run NAME key=value ...`` (same as ``make experiment NAME=...``)."""
from __future__ import annotations

import argparse
import os
import sys


def _fail(msg: str, code: int = 2) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)


def cmd_run(args: argparse.Namespace) -> None:
    from lab.config import load_experiment
    from lab.run import run_experiment

    cfg = load_experiment(args.name, args.overrides)
    if cfg.get("sweep"):
        from lab.sweep import run_sweep

        run_sweep(args.name, args.overrides)
    else:
        run_experiment(cfg)


def cmd_report(args: argparse.Namespace) -> None:
    from lab.sweep_report import write_report

    write_report(args.name, args.overrides, out=args.out)


def cmd_list(args: argparse.Namespace) -> None:
    from lab.config import available_experiments

    print("\n".join(available_experiments()))


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded at run time
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(prog="python -m lab", description="bitlab: image-tokenizer ablations")
    sub = parser.add_subparsers(dest="command", required=True)
    from lab import findings  # light at import: reads results/, imports scipy only when it runs

    findings.register(sub)
    p = sub.add_parser("run", help="train and evaluate an experiment (or a sweep)")
    p.add_argument("name", help="experiment path under experiments/, e.g. quickstart or tokenizer/bsq")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. trainer.max_steps=200")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("report", help="rebuild a sweep's results.csv, table and plots from its runs (no training)")
    p.add_argument("name", help="the sweep's experiment path, e.g. ablations/order")
    p.add_argument("overrides", nargs="*", help="the same key=value overrides the sweep ran with (e.g. preset=smoke)")
    p.add_argument("--out", default=None, help="write there (e.g. results/order) instead of runs/NAME/")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("list", help="list the experiments")
    p.set_defaults(func=cmd_list)
    from lab import cli_bench, cli_sample, noise

    cli_sample.register(sub)
    cli_bench.register(sub)
    noise.register(sub)
    args = parser.parse_args(argv)

    from lab.data import DataError
    from lab.modules import NonFiniteLossError
    from lab.registry import ConfigError

    try:
        args.func(args)
    except (ConfigError, DataError, NonFiniteLossError) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted; resume with resume=true", 130)


if __name__ == "__main__":
    main()
