"""``python -m lab bench [--quick] [--only quantizers,heads] [--out DIR]`` (same as ``make bench``).

Writes ``OUT/<part>.json`` per part (header + columns + rows), prints each table, and writes ``OUT/bench.md``
with the tables of every part present in OUT (so ``--only`` refreshes one part of the report).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path

from lab.core.registry import ConfigError


def _header(settings, threads: int) -> dict:
    import torch  # imported by the command, not at `python -m lab` start-up (list and --help stay instant)

    from lab.runtime.machine import machine_summary
    from lab.runtime.trainer import cpu_load

    device = settings.device
    m = machine_summary()
    name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else m["cpu"]
    return dict(torch=torch.__version__, device=f"{device} ({name})", cpu_count=os.cpu_count(), threads=threads,
                cpu=m["cpu"], cpu_capability=m["cpu_capability"], native_bf16=m["native_bf16"],
                native_bf16_units=m["native_bf16_units"], load_per_core=round(cpu_load(), 2),
                date=datetime.datetime.now().isoformat(timespec="seconds"), repeats=settings.repeats,
                max_seconds_per_case=settings.max_seconds, mem_budget_gb=settings.mem_budget_gb, quick=settings.quick,
                note="wall-clock timings on a possibly shared machine are noisy; read the ratios measured in the same run")


def _section(name: str, doc: dict, markdown: bool) -> str:
    from lab.bench.parts import PARTS, format_table

    h = doc["header"]
    cpu = f"CPU {h['cpu']}, torch capability {h['cpu_capability']}, native bf16 " \
          f"{'yes (' + h['native_bf16_units'] + ')' if h['native_bf16'] else 'no'}, " if "cpu" in h else ""
    load = f", 1-minute load {h['load_per_core']} per core at the start" if "load_per_core" in h else ""
    meta = f"torch {h['torch']}, {h['device']}, {cpu}{h['cpu_count']} CPUs, {h['threads']} thread(s){load}, {h['date']}, " \
           f"median of <= {h['repeats']} repeats{' (quick)' if h['quick'] else ''}"
    table = format_table(doc["rows"], PARTS[name]["columns"], markdown=markdown)
    notes = doc["notes"] + [h["note"]]
    if markdown:
        return f"## {name}\n\n{meta}\n\n{table}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    return f"== {name} ({meta})\n{table}\n" + "\n".join(f"  * {n}" for n in notes) + "\n"


def cmd_bench(args: argparse.Namespace) -> None:
    import torch  # imported by the command, not at `python -m lab` start-up (list and --help stay instant)

    from lab.bench.parts import PARTS, Settings

    names = list(PARTS) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        raise ConfigError(f"unknown bench part(s) {', '.join(unknown)}; valid: {', '.join(PARTS)}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings(quick=args.quick, device=device, mem_budget_gb=args.mem_budget_gb,
                        repeats=args.repeats or (2 if args.quick else 5), max_seconds=1.0 if args.quick else 10.0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header = _header(settings, torch.get_num_threads())
    for name in names:
        doc = dict(part=name, header=header, notes=PARTS[name]["notes"],
                   columns=[k for k, _, _ in PARTS[name]["columns"]], rows=[], complete=False)
        for row in PARTS[name]["fn"](settings):  # a list, or a generator for the parts that can run long
            doc["rows"].append(row)
            _write(out / f"{name}.json", doc)  # each row as soon as it is measured: an interrupted run keeps them
        doc["complete"] = True
        _write(out / f"{name}.json", doc)
        print(("\r\033[K" if os.isatty(2) else "") + _section(name, doc, markdown=False), flush=True)
        _write_markdown(out)
    print(f"wrote {', '.join(f'{n}.json' for n in names)} and bench.md to {out}")


def _write(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def _write_markdown(out: Path) -> None:
    """bench.md with the tables of every part present in ``out`` (rewritten after each part)."""
    from lab.bench.parts import PARTS

    docs = {n: json.loads((out / f"{n}.json").read_text()) for n in PARTS if (out / f"{n}.json").exists()}
    md = "# bitlab bench\n\n" + "\n".join(_section(n, d, markdown=True) for n, d in docs.items())
    (out / "bench.md").write_text(md)


def register(sub) -> None:
    from lab.config import ROOT

    p = sub.add_parser("bench", help="performance figures -> runs/bench/*.json and bench.md")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench"), help="output directory (default runs/bench)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and repeats (for the tests)")
    p.add_argument("--only", default=None, help="comma-separated parts: quantizers,heads,families,sampling,training,machine,generator_train,roofline,profile,inception,attention")
    p.add_argument("--mem-budget-gb", dest="mem_budget_gb", type=float, default=8.0,
                   help="skip cases whose estimated memory exceeds this (default 8)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op CPU threads (default 1: on a shared machine more threads than free cores makes "
                        "small ops ~100x slower through OpenMP contention; 0 keeps torch's default)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per case (default 5, quick 2)")
    p.set_defaults(func=cmd_bench)
