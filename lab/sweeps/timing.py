"""How long a suite's runs take, measured: the median ``wall_time_s`` of its runs per kind of machine they recorded.
``run_time_text`` takes the published records (``results/<suite>/runs/<point>/s<seed>/metrics.json``): the figure
``lab list`` and the README's run-time column give (a test holds the README to it). A suite's report computes the
same median (``time_text``) over the runs it reports, i.e. the same records where it is built from them.

The median, not the mean: the first run on a machine also computes the evaluation's reference features (cached
per user afterwards), and a run that shared its cores with other work is slower; neither is a run's cost.
"""
from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Iterable, Mapping

from lab.core.numfmt import fmt_duration

# AMD family -> (model ranges, microarchitecture); family 23 = 0x17, 25 = 0x19, 26 = 0x1A.
_AMD = {
    23: ((range(0x00, 0x30), "Zen"), (range(0x30, 0x100), "Zen 2")),
    25: ((range(0x10, 0x20), "Zen 4"), (range(0x60, 0x80), "Zen 4"), (range(0xA0, 0xB0), "Zen 4"),
         (range(0x00, 0x100), "Zen 3")),
    26: ((range(0x00, 0x100), "Zen 5"),),
}


# Intel family 6 server models -> microarchitecture (the cloud machines' Xeons).
_INTEL6 = {85: "Cascade Lake", 106: "Ice Lake", 108: "Ice Lake", 143: "Sapphire Rapids", 207: "Emerald Rapids",
           173: "Granite Rapids"}


def cpu_kind(cpu: str) -> str:
    """``AMD EPYC (family 25 model 17)`` -> ``Zen 4``, ``Intel(R) Xeon(R) ... (family 6 model 106)`` -> ``Ice Lake``;
    a CPU these tables do not know keeps its recorded name."""
    m = re.search(r"family (\d+) model (\d+)", cpu or "")
    if m and "AMD" in cpu:
        for models, kind in _AMD.get(int(m.group(1)), ()):
            if int(m.group(2)) in models:
                return kind
    if m and "Intel" in cpu and int(m.group(1)) == 6 and int(m.group(2)) in _INTEL6:
        return _INTEL6[int(m.group(2))]
    return cpu or "an unrecorded CPU"


def times_by_machine(metrics: Iterable[Mapping]) -> dict[str, list[float]]:
    """{machine kind (``Zen 4``, a GPU's name): [wall_time_s of each run]} of runs' metrics (those without a
    wall time, or with only part of it, ``time_partial``, skipped)."""
    out: dict[str, list[float]] = {}
    for m in metrics:
        if m.get("time_partial"):  # a resumed run whose earlier parts' time is unknown: its time is not a run's
            continue
        try:
            wall = float(m["wall_time_s"])
        except (KeyError, TypeError, ValueError):
            continue
        out.setdefault(str(m.get("gpu") or "") or cpu_kind(str(m.get("cpu") or "")), []).append(wall)
    return out


def record_times(folder: Path) -> dict[str, list[float]]:
    """``times_by_machine`` of the published records of ``results/<suite>`` (unreadable records skipped: the report
    names them)."""
    metrics = []
    for path in sorted(Path(folder).glob("runs/*/s*/metrics.json")):
        try:
            metrics.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return times_by_machine(metrics)


def time_text(times: Mapping[str, list[float]]) -> str:
    """``12m03s a run (median of 6 runs, Zen 5)``, one part per machine kind, the most runs first."""
    return "; ".join(f"{fmt_duration(statistics.median(t))} a run (median of {len(t)} run{'s' * (len(t) > 1)}, {kind})"
                     for kind, t in sorted(times.items(), key=lambda kv: -len(kv[1])) if t)


def run_time_text(folder: Path) -> str:
    """The measured run time of a suite from its published records; "" when there is none."""
    return time_text(record_times(folder))
