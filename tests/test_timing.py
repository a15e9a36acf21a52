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
