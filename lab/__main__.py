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

    run_experiment(load_experiment(args.name, args.overrides))


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
    p = sub.add_parser("list", help="list the experiments")
    p.set_defaults(func=cmd_list)
    from lab import cli_bench, cli_sample

    cli_sample.register(sub)
    cli_bench.register(sub)
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
