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
        from lab.sweep import incomplete

        missing = incomplete(args.name, args.overrides)
        if missing:
            _fail(f"the sweep ended with {len(missing)} run(s) not finished: {', '.join(missing[:10])}"
                  f"{' ...' if len(missing) > 10 else ''}. The others are in its results; rerun the same command to "
                  "retry the missing ones (a failed.json marks a run that failed: delete it to retry).", 1)
    else:
        run_experiment(cfg)


def cmd_report(args: argparse.Namespace) -> None:
    from lab.safety import check_report
    from lab.sweep_report import write_report

    check_report(args.name, args.overrides, out=args.out, force=args.force)
    write_report(args.name, args.overrides, out=args.out)


def cmd_list(args: argparse.Namespace) -> None:
    from lab.config import available_experiments

    print("\n".join(available_experiments()))


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded at run time
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(prog="python -m lab", description="bitlab: image-tokenizer ablations")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train and evaluate an experiment (or a sweep)")
    p.add_argument("name", help="experiment path under experiments/, e.g. quickstart or tokenizer/bsq")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. trainer.max_steps=200")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("report", help="rebuild a sweep's results.csv, table and plots from its runs (no training)")
    p.add_argument("name", help="the sweep's experiment path, e.g. ablations/order")
    p.add_argument("overrides", nargs="*", help="the same key=value overrides the sweep ran with (e.g. preset=smoke)")
    p.add_argument("--out", default=None, help="write there (e.g. results/order) instead of runs/NAME/")
    p.add_argument("--force", action="store_true",
                   help="replace a report in --out even when it has more finished runs than this one")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("list", help="list the experiments")
    p.set_defaults(func=cmd_list)
    from lab import cli_bench, cli_sample

    cli_sample.register(sub)
    cli_bench.register(sub)
    args = parser.parse_args(argv)

    from lab.data import DataError
    from lab.modules import NonFiniteLossError
    from lab.registry import ConfigError

    from lab import signals

    signals.install()
    try:
        args.func(args)
    except (ConfigError, DataError, NonFiniteLossError) as e:
        _fail(str(e))
    except (KeyboardInterrupt, SystemExit) as e:
        # Lightning turns Ctrl-C into sys.exit(1) and SIGTERM into SystemExit; lab.signals saw which it was
        if isinstance(e, SystemExit) and not signals.STOPPED:
            raise
        sig = signals.STOPPED.get("signal", "SIGINT")
        if args.command == "run":
            from lab.config import load_experiment

            is_sweep = bool(load_experiment(args.name, args.overrides).get("sweep"))
            msg = signals.resume_hint(args.name, list(args.overrides), is_sweep)
        else:
            msg = f"interrupted ({sig}); nothing to resume: run the command again."
        _fail(msg, 143 if sig == "SIGTERM" else 130)


if __name__ == "__main__":
    main()
