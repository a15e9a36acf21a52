"""A suite's measured run time (lab/sweeps/timing.py): the median of its records per CPU kind."""
from __future__ import annotations

import json

from lab.sweeps.timing import cpu_kind, record_times, run_time_text


def test_cpu_kinds_of_the_machines_seen():
    assert cpu_kind("AMD EPYC (family 23 model 49)") == "Zen 2"
    assert cpu_kind("AMD EPYC (family 25 model 17)") == "Zen 4"
    assert cpu_kind("AMD EPYC 7763 64-Core Processor (family 25 model 1)") == "Zen 3"
    assert cpu_kind("AMD EPYC (family 26 model 2)") == "Zen 5"
    assert cpu_kind("Intel(R) Xeon(R) Processor @ 2.80GHz (family 6 model 106)") == "Ice Lake"
    assert cpu_kind("Intel(R) Xeon(R) Platinum 8481C (family 6 model 143)") == "Sapphire Rapids"
    assert cpu_kind("Intel(R) Core(TM) i7 (family 6 model 1)").startswith("Intel")  # unknown: kept as recorded
    assert cpu_kind("") == "an unrecorded CPU"


def test_the_median_of_the_records_per_cpu_and_bad_records_skipped(tmp_path):
    def record(point, seed, wall, cpu):
        d = tmp_path / "runs" / point / f"s{seed}"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"wall_time_s": wall, "cpu": cpu}))

    assert run_time_text(tmp_path) == ""
    zen5, zen4 = "AMD EPYC (family 26 model 2)", "AMD EPYC (family 25 model 17)"
    for i, wall in enumerate([700, 2900, 720]):  # the first run computed the reference: the median ignores it
        record("none", i, wall, zen5)
    record("flip", 0, 1500, zen4)
    (tmp_path / "runs" / "flip" / "s1").mkdir()
    (tmp_path / "runs" / "flip" / "s1" / "metrics.json").write_text("{not json")
    assert record_times(tmp_path) == {"Zen 5": [700.0, 2900.0, 720.0], "Zen 4": [1500.0]}
    assert run_time_text(tmp_path) == "12m00s a run (median of 3 runs, Zen 5); 25m00s a run (median of 1 run, Zen 4)"


def test_a_resumed_run_with_only_its_last_part_timed_is_left_out(tmp_path):
    """A run resumed from a checkpoint that did not carry its earlier time records ``time_partial``: its wall time
    (the last part: often just the evaluation) is not a run's time and must not pull the median down."""
    for seed, (wall, partial) in enumerate([(1800, False), (1900, False), (190, True)]):
        d = tmp_path / "runs" / "digits" / f"s{seed}"
        d.mkdir(parents=True)
        m = {"wall_time_s": wall, "cpu": "AMD EPYC (family 25 model 17)"} | ({"time_partial": True} if partial else {})
        (d / "metrics.json").write_text(json.dumps(m))
    assert record_times(tmp_path) == {"Zen 4": [1800.0, 1900.0]}


def test_the_step_timer_carries_a_runs_time_through_resumes_and_an_unknown_part_stays_unknown():
    """The step timer's state (saved in every checkpoint) adds each part of a run; a run once resumed from a
    checkpoint without it is partial, and stays partial through a second stop and resume (its checkpoints say NaN),
    instead of passing its later parts off as the whole run."""
    import math

    from lab.runtime.trainer import StepTimer

    first = StepTimer()
    first._started -= 100.0  # this part ran 100 s
    saved = first.state_dict()
    assert 100.0 <= saved["elapsed_s"] < 110.0

    second = StepTimer()  # resumed from that checkpoint: Lightning calls on_load_checkpoint, then load_state_dict
    second.on_load_checkpoint(None, None, {"callbacks": {}})
    second.load_state_dict(saved)
    assert second.time_before(resumed=True) == saved["elapsed_s"]
    assert StepTimer().time_before(resumed=False) == 0.0

    old = StepTimer()  # resumed from a checkpoint written before the time was saved: no state to load
    old.on_load_checkpoint(None, None, {"callbacks": {}})
    assert old.time_before(resumed=True) is None
    later = old.state_dict()
    assert math.isnan(later["elapsed_s"])  # its own checkpoints say the whole is unknown

    again = StepTimer()  # resumed a second time
    again.on_load_checkpoint(None, None, {"callbacks": {}})
    again.load_state_dict(later)
    assert again.time_before(resumed=True) is None and math.isnan(again.state_dict()["elapsed_s"])


def test_the_reports_mean_time_leaves_out_a_run_with_only_its_last_part_timed():
    """The report's table: a ``time_partial`` record's wall time (its last part: often the evaluation alone) is not
    averaged with whole runs' times; the cell says how many seeds it has."""
    from lab.sweeps.report_sections import markdown_table

    rows = [{"point": "digits", "case": "digits", "seed": s, "status": "done", "gfid": g, "wall_time_s": w,
             **({"time_partial": True} if partial else {})}
            for s, (g, w, partial) in enumerate([(52.1, 151.0, True), (51.9, 1345.0, False), (52.0, 1355.0, False)])]
    table = markdown_table(rows, ["case"], ["gfid", "wall_time_s"])
    row = table.splitlines()[-1]
    assert "1,350 ± 7 (2 seeds)" in row and "52.00 ± 0.10" in row, table
