"""Command line: ``python -m lab run NAME key=value ...`` (same as ``make experiment NAME=...``)."""
from __future__ import annotations

import argparse
import os
import sys


# keys that a --sweep list may carry as plain overrides rather than axes (one value, not a grid)
_PLAIN_KEYS = ("seeds", "preset", "runs_dir", "seed", "report.baseline", "publish", "sweep", "report")


# `run --help`: the keys that are not model settings (every key: experiments/base.yaml, or --dry-run)
RUN_KEYS = """special keys (key=value, like any override; every other key: experiments/base.yaml):
  preset=cpu|smoke|gpu    the scale: smoke is a quick check (tiny data, a few steps); gpu: paper-like
  seed=N                  the random seed (default 0)
  run_name=NAME           the run's name (default: the experiment's, plus the data, quantizer, head or
                          generator size this run changes, e.g. quickstart-imagefolder)
  tags=[a,b]              short words to group and select runs by (lab compare --tag a)
  runs_dir=DIR            where runs go (default runs): DIR/<experiment>/<run_name>-<time>-s<seed>
  run_id=ID               the run directory's name, instead of <run_name>-<time>-s<seed>
  resume=true             continue the latest run of this experiment (or run_id=ID) from its checkpoint
  resume_allow=[key,...]  keys a resume may change on purpose, e.g. [trainer.max_steps]
  tokenizer_from=PATH     a generator: this tokenizer checkpoint or run directory, not a new one
  publish=DIR, --publish  a suite: publish each finished run's record into DIR (default results/<suite>)

examples:
  python -m lab run quickstart preset=smoke
  python -m lab run quickstart data.name=imagefolder data.path=~/photos tags=[photos]
  python -m lab run generator/c2i_fashion tokenizer_from=runs/tokenizer/bsq/<run> run_name=bsq-gen
"""


def _fail(msg: str, code: int = 2) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)


def cmd_run(args: argparse.Namespace) -> None:
    if args.verbose:
        os.environ["BITLAB_VERBOSE"] = "1"  # read by lab.runtime.quiet (also in the processes a multi-device run starts)
    if args.sweep:
        args.overrides = sweep_overrides(args.name, args.sweep, args.overrides)
    if args.dry_run:
        from lab.cli.info import dry_run

        return dry_run(args.name, args.overrides)
    from lab.config import load_experiment
    from lab.stages.run import run_experiment

    cfg = load_experiment(args.name, args.overrides)
    if cfg.get("sweep"):
        from lab.sweeps.shards import parse_shard
        from lab.sweeps.sweep import incomplete, run_sweep

        from lab.sweeps.records import results_dir

        shard = parse_shard(args.shard)
        publish = args.publish if args.publish is not None else cfg.get("publish")
        if publish is True or publish == "":  # --publish alone, or `publish: true`: the suite's results folder
            publish = str(results_dir(str(cfg["name"])))
        publish = str(publish) if publish else None
        run_sweep(args.name, args.overrides, publish=publish, shard=shard, force=args.force)
        from lab.runtime.files import process_rank

        if process_rank() > 0:  # a multi-process run's other rank: rank 0 evaluates, publishes and checks the suite
            return  # (an error exit here made Lightning kill rank 0 in the middle of its evaluation)
        missing = incomplete(args.name, args.overrides, publish=publish, shard=shard)
        if missing:
            _fail(f"the sweep ended with {len(missing)} run(s) not finished: {', '.join(missing[:10])}"
                  f"{' ...' if len(missing) > 10 else ''}. The others are in its results; rerun the same command to "
                  "retry the missing ones (a failed.json marks a run that failed: delete it to retry).", 1)
    else:
        if args.publish or args.shard:
            _fail(f"--publish and --shard are for suites (an experiment with a `sweep:`); {args.name} is one run.")
        run_experiment(cfg)


def _sweep_options(args: argparse.Namespace) -> list[str]:
    """The options of ``python -m lab run`` a suite resumes with, as they were given."""
    options = []
    if args.publish is not None:
        options += ["--publish", args.publish] if args.publish else ["--publish"]
    if args.shard:
        options += ["--shard", args.shard]
    if args.force:
        options.append("--force")
    return options  # an ad hoc --sweep is in the overrides already (sweep={...}, see cmd_run)


def sweep_overrides(name: str, axes: list[str], overrides: list[str]) -> list[str]:
    """``--sweep key=a,b key2=x,y`` -> the overrides of the same ad hoc suite: ``sweep={key: [a, b], ...}`` and, unless
    the command names one, ``report.baseline`` = the first value of the first axis. The suite then runs, reports,
    shards and checks staleness like a YAML suite, with these overrides as its own."""
    import json

    import yaml

    from lab.config import load_experiment
    from lab.core.registry import ConfigError

    if load_experiment(name, [], validate=False).get("sweep"):
        raise ConfigError(f"{name} is a suite already (its YAML has `sweep:`); --sweep makes a suite of a single "
                          "experiment. Change the suite's axes with sweep.KEY=[...] overrides, or copy it.")
    if any(o.split("=", 1)[0] == "sweep" for o in overrides):
        raise ConfigError("give the grid either with --sweep key=a,b or with sweep={...}, not both.")
    grid: dict = {}
    for item in axes:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ConfigError(f"--sweep {item!r}: give KEY=V1,V2,... (e.g. --sweep quantizer.bits=8,16 head.name=index,bitwise).")
        parts, depth, cur = [], 0, ""
        for ch in values:  # commas inside [...] or {...} belong to one value
            depth += ch in "[{"
            depth -= ch in "]}"
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        parts.append(cur)
        try:
            grid[key] = [yaml.safe_load(v) for v in parts if v.strip() != ""]
        except yaml.YAMLError as e:
            raise ConfigError(f"--sweep {item!r}: a value is not plain YAML ({str(e).splitlines()[0]}).") from None
        if not grid[key]:
            raise ConfigError(f"--sweep {item!r}: no values.")
    out = [*overrides, "sweep=" + json.dumps(grid)]
    if not any(o.split("=", 1)[0] in ("report", "report.baseline") for o in overrides):
        first = next(iter(grid))
        out.append("report.baseline=" + json.dumps({first: grid[first][0]}))
    return out


def cmd_status(args: argparse.Namespace) -> None:
    from lab.cli.status import status

    status(args.name, args.overrides, publish=args.publish)


def cmd_report(args: argparse.Namespace) -> None:
    from lab.sweeps.report import check_report
    from lab.sweeps.report import write_report

    check_report(args.name, args.overrides, out=args.out, force=args.force)
    write_report(args.name, args.overrides, out=args.out)


def cmd_list(args: argparse.Namespace) -> None:
    from lab.cli.info import cmd_list as list_experiments

    list_experiments(args)


def _user_errors() -> tuple[type[BaseException], ...]:
    """The errors that are the user's to fix, printed as one line. A module that was never imported cannot have
    raised its own error, so the check imports nothing (``list`` and ``--help`` stay instant)."""
    from lab.core.registry import ConfigError

    found: list[type[BaseException]] = [ConfigError]
    for module, name in (("lab.data.sources", "DataError"), ("lab.train.modules", "NonFiniteLossError")):
        if module in sys.modules:
            found.append(getattr(sys.modules[module], name))
    return tuple(found)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m lab`` and its sub-commands."""
    parser = argparse.ArgumentParser(prog="python -m lab", description="bitlab: image-tokenizer ablations")
    sub = parser.add_subparsers(dest="command", required=True)
    from lab.sweeps import findings  # light at import: reads results/, imports scipy only when it runs

    findings.register(sub)
    p = sub.add_parser("run", help="train and evaluate an experiment (or a sweep)", epilog=RUN_KEYS,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="experiment path under experiments/, e.g. quickstart or tokenizer/bsq")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. trainer.max_steps=200")
    p.add_argument("--dry-run", dest="dry_run", action="store_true",
                   help="print the resolved config and the run directory (every point of a sweep); create nothing")
    p.add_argument("--verbose", action="store_true",
                   help="show every warning, Lightning tip and log line (default: known-harmless ones hidden; "
                        "or set BITLAB_VERBOSE=1)")
    p.add_argument("--publish", nargs="?", const="", default=None, metavar="DIR",
                   help="a suite: publish each finished run's record (config, metrics, images; no checkpoints) "
                        "into DIR (default results/<suite>) as it finishes, and the report at the end")
    p.add_argument("--shard", default=None, metavar="I/K",
                   help="a suite: run only the I-th of K disjoint slices of its runs (balanced by estimated cost); "
                        "slurm: I and K from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT")
    p.add_argument("--force", action="store_true", help="with --publish: replace a different published record")
    p.add_argument("--sweep", nargs="+", default=None, metavar="KEY=V1,V2",
                   help="run a grid of one experiment as an ad hoc suite (e.g. --sweep quantizer.bits=8,16 "
                        "head.name=index,bitwise seeds=[0,1,2]): records, report, verdicts (against the first value, "
                        "or report.baseline=...), shards and stale checks as a YAML suite")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("status", help="where a suite stands: runs finished (local and published), time per run, "
                                      "time left, the command that continues it")
    p.add_argument("name", help="the suite's experiment path, e.g. ablations/order")
    p.add_argument("overrides", nargs="*", help="the key=value overrides the suite runs with (e.g. preset=smoke)")
    p.add_argument("--publish", default=None, metavar="DIR", help="the published records' folder (default results/<suite>)")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("report", help="rebuild a sweep's results.csv, table and plots from its runs (no training)")
    p.add_argument("name", help="the sweep's experiment path, e.g. ablations/order")
    p.add_argument("overrides", nargs="*", help="the same key=value overrides the sweep ran with (e.g. preset=smoke)")
    p.add_argument("--out", default=None, help="write there (e.g. results/order) instead of runs/NAME/")
    p.add_argument("--force", action="store_true",
                   help="replace a report in --out even when it has more finished runs than this one")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("list", help="list the experiments: what each answers, and its run time where known")
    p.set_defaults(func=cmd_list)
    from lab.cli import bench as cli_bench
    from lab.cli import compare as cli_compare
    from lab.cli import noise as cli_noise
    from lab.cli import sample as cli_sample

    cli_compare.register(sub)
    cli_sample.register(sub)
    cli_bench.register(sub)
    cli_noise.register(sub)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, parsed: ``--publish key=value`` and overrides after an option are overrides."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "publish", None) and "=" in args.publish:  # `--publish key=value`: an override, not a folder
        extra, args.publish = [args.publish, *extra], ""
    if getattr(args, "sweep", None):  # plain overrides given after --sweep (seeds=[...], preset=...) are overrides
        axes = [a for a in args.sweep if a.partition("=")[0] not in _PLAIN_KEYS]
        args.overrides += [a for a in args.sweep if a not in axes]
        args.sweep = axes
    if args.command == "run" and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides += extra  # overrides after an option: run NAME --dry-run a=1 b=2
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded at run time
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if os.environ.get("BITLAB_VERBOSE", "").lower() in ("", "0", "false", "no"):
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # a one-off cache write, not a phase
    args = parse_args(argv)
    from lab.runtime import signals

    signals.install()
    try:
        args.func(args)
    except Exception as e:  # noqa: BLE001 - the user's errors in one line, the rest with their traceback
        if not isinstance(e, _user_errors()):
            raise
        _fail(str(e))
    except (KeyboardInterrupt, SystemExit) as e:
        # Lightning turns Ctrl-C into sys.exit(1) and SIGTERM into SystemExit; lab.runtime.signals saw which it was
        if isinstance(e, SystemExit) and not signals.STOPPED:
            raise
        sig = signals.STOPPED.get("signal", "SIGINT")
        from lab.runtime.files import process_rank

        if process_rank() > 0:  # a multi-process run's other rank: rank 0 prints the one message and exits with
            sys.exit(0)  # the signal's code (a non-zero exit here let Lightning's process observer kill rank 0 first)
        if args.command == "run":
            from lab.config import load_experiment

            is_sweep = bool(load_experiment(args.name, args.overrides).get("sweep"))
            msg = signals.resume_hint(args.name, list(args.overrides), is_sweep, _sweep_options(args))
        else:
            msg = f"interrupted ({sig}); nothing to resume: run the command again."
        _fail(msg, 143 if sig == "SIGTERM" else 130)


if __name__ == "__main__":
    main()
