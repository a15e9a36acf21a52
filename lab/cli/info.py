"""``python -m lab list`` (what each experiment answers, how long it takes) and ``lab run NAME --dry-run``.

``list`` reads only the YAML files' leading comments (and, for the run time, the committed ``results/``), so it
imports nothing heavy and answers at once. ``--dry-run`` resolves and validates the config exactly as a run
would, then prints it and the run directory it would use, creating nothing.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

from lab.config import ROOT, available_experiments, header_comment, load_experiment, to_dict
from lab.config.runs import new_run_id
from lab.runtime.files import runs_root
from lab.sweeps.plan import plan
from lab.sweeps.timing import run_time_text

# a duration as the YAML headers write it: "10 minutes", "9 min 18 s", "1h15m", "2 hours"
_DURATION = r"(?:\d+h\d{2}m|\d+(?:\.\d+)? ?(?:minutes|min|hours?)\b(?: \d+ ?s\b)?)"


def _drop_parentheses(text: str) -> str:
    """Text without its (possibly nested) parenthesised asides: the paper numbers there make a line unreadable."""
    out, depth = [], 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif not depth:
            out.append(ch)
    return re.sub(r"\s+([,.:;])", r"\1", re.sub(r"\s+", " ", "".join(out))).strip()


def describe(lines: Sequence[str]) -> str:
    """What the experiment answers: the first sentence of its header's first paragraph (the second too when the
    first is only a title), asides in parentheses dropped."""
    para = []
    for line in lines:
        if not line or line.startswith("-"):
            break
        para.append(line)
    sentences = re.findall(r".+?(?:\.(?=\s|$)|$)", _drop_parentheses(" ".join(para)))
    sentences = [s.strip() for s in sentences if s.strip()]
    text = sentences[0] if sentences else ""
    if len(text) < 50 and len(sentences) > 1:
        text += " " + sentences[1]
    return text


def stated_run_time(lines: Sequence[str]) -> str:
    """The run time the header states ("about 10 minutes on a 2-core CPU"), or ""."""
    text = " ".join(lines)
    m = re.search(r"\b[Aa]bout " + _DURATION + r"[^.,;:()]*", text) or re.search(_DURATION + r" on [^.,;:()]*", text)
    return m.group(0).strip() if m else ""


def measured_run_time(name: str) -> str:
    """From the committed results (results/<experiment>/metrics.json): the wall time of its one published run."""
    folder = ROOT / "results" / Path(name).name
    metrics = folder / "metrics.json"
    if metrics.is_file():
        try:
            s = float(json.loads(metrics.read_text()).get("wall_time_s"))
        except (TypeError, ValueError, json.JSONDecodeError):
            return ""
        return f"run measured {int(s // 60)}m{int(s % 60):02d}s (results/{folder.name}/metrics.json)"
    return ""


def cmd_list(args: Any = None) -> None:
    names = available_experiments()
    width = max(map(len, names)) + 2
    cols = shutil.get_terminal_size((10_000, 24)).columns if sys.stdout.isatty() else 10_000
    for name in names:
        lines = header_comment(name)
        measured = run_time_text(ROOT / "results" / Path(name).name)  # a suite's published records, per CPU kind
        when = f"measured {measured}" if measured else stated_run_time(lines) or measured_run_time(name)
        text = describe(lines)
        text += f" [{when}]" if when and when not in text else ""
        if len(text) > cols - width:  # one line per experiment on a terminal
            text = text[: max(10, cols - width - 3)] + "..."
        print(f"{name:<{width}}{text}")


def planned_run_dir(cfg: Any) -> str:
    """The run directory ``lab.stages.run.make_run_dir`` would use for ``cfg``, computed without creating anything."""
    base = runs_root(cfg["runs_dir"]) / cfg["name"]
    if cfg["resume"]:
        if cfg["run_id"]:
            return str(base / str(cfg["run_id"])) + " (resumed)"
        found = sorted(base.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        return f"{found[-1].parent.parent} (resumed: the latest checkpoint)" if found else \
            f"none: resume=true but no run under {base} has checkpoints/last.ckpt"
    if cfg["run_id"]:
        run_dir = base / str(cfg["run_id"])
        return str(run_dir) + (" (exists: the run would be refused)" if run_dir.exists() else "")
    return str(base / new_run_id(cfg)) + " (a new id: the run's name, the start time and the seed)"


def dry_run(name: str, overrides: Sequence[str]) -> None:
    """Print the resolved config and its run directory (every point of a sweep, each with its own); write nothing."""
    from omegaconf import OmegaConf

    from lab.stages.preflight import check_run

    cfg = load_experiment(name, overrides)
    if not cfg.get("sweep"):
        notes = check_run(cfg)  # every check a run makes before it builds anything
        print(OmegaConf.to_yaml(cfg, resolve=True).rstrip())
        print(f"# run directory: {planned_run_dir(cfg)}")
        print("".join(f"# note: {n}\n" for n in notes) + "# dry run: every check passed; nothing was created")
        return

    suite, jobs = plan(name, overrides)
    notes = list(dict.fromkeys(n for job in jobs for n in check_run(job.cfg)))
    print(OmegaConf.to_yaml(suite, resolve=True).rstrip())
    common = _flat(to_dict(suite))
    print(f"\n# sweep {suite['name']}: {len(jobs)} runs, each the config above with")
    for i, job in enumerate(jobs, 1):
        own = _flat(to_dict(job.cfg))
        swept = _flat(job.point.layer)  # shown even where the value equals the suite's
        diff = {k: v for k, v in own.items()
                if (k in swept or common.get(k) != v) and k.split(".")[0] not in _SWEEP_BOOKKEEPING}
        diff |= {k: "(unset)" for k in common if k not in own and k.split(".")[0] not in _SWEEP_BOOKKEEPING}
        done = " (finished)" if (job.run_dir / "metrics.json").is_file() else ""
        print(f"#  {i:>3}. {job.run_dir}{done}: " + " ".join(f"{k}={v}" for k, v in diff.items()))
    print("".join(f"# note: {n}\n" for n in notes) + "# dry run: every check passed; nothing was created")


_SWEEP_BOOKKEEPING = ("name", "run_id", "sweep", "seeds", "resume", "presets", "report")


def _flat(d: Any, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
