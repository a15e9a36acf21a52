"""The config keeps its shape: every experiment's config and every planned sweep run's config (as a record compares
them: lab/sweeps/records.py ``requested``) and every generator's tokenizer cache key (``runs/_tokenizers/<hash>``)
are those of tests/data/config_snapshot.json, written before the typed sections (issue 27). A published record is
matched against the current config key by key, so a change here would orphan every record and cached tokenizer.

Committed records (results/<suite>/.../config.yaml) are checked directly where there are any. To change the config's
shape on purpose, regenerate the snapshot (``python tests/test_config_shape.py > tests/data/config_snapshot.json``)
and say in the commit which records and caches it orphans."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / "tests" / "data" / "config_snapshot.json"


def _digest(cfg) -> str:
    """The config as a record comparison sees it: requested values, without the keys comparisons ignore
    (bookkeeping such as run_name, tags, publish: lab/config/runs.py RESUME_IGNORED)."""
    from lab.config.runs import RESUME_IGNORED, flatten
    from lab.sweeps.records import requested

    flat = {k: v for k, v in flatten(requested(cfg)).items()
            if not any(k == i or k.startswith(i + ".") for i in RESUME_IGNORED)}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _entry(cfg, tokenizer_config) -> dict:
    from lab.config import to_dict

    entry = {"config": _digest(to_dict(cfg))}
    if cfg["stage"] == "generator":
        entry["tokenizer_cache"] = str(tokenizer_config(cfg)["name"])
    return entry


def snapshot() -> dict:
    from lab.config import available_experiments, load_experiment
    from lab.stages.generator import tokenizer_config
    from lab.sweeps.plan import plan

    out: dict = {}
    for preset in ("smoke", "cpu"):
        for name in available_experiments():
            cfg = load_experiment(name, [f"preset={preset}"])
            out[f"{preset}:{name}"] = _entry(cfg, tokenizer_config)
            if cfg.get("sweep"):  # every planned run of a suite, as its record would compare
                for job in plan(name, [f"preset={preset}"])[1]:
                    out[f"{preset}:{job.cfg['name']}/s{job.seed}"] = _entry(job.cfg, tokenizer_config)
    return out


@pytest.mark.slow
def test_every_config_and_tokenizer_cache_key_keeps_its_shape():
    want = json.loads(SNAPSHOT.read_text())
    have = snapshot()
    changed = {k: (want.get(k), have.get(k)) for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)}
    assert not changed, f"configs or tokenizer cache keys changed shape (snapshot -> now): {changed}"


def test_committed_records_still_match_their_configs():
    """Every committed record's config.yaml compares equal with the config its suite plans for it now."""
    from lab.sweeps.records import record_dir, read_yaml, record_differences, results_dir

    records = sorted((ROOT / "results").glob("*/**/config.yaml"))
    if not records:
        pytest.skip("no committed records under results/ (the planned configs are checked against the snapshot)")
    from lab.sweeps.plan import plan

    from lab.config import available_experiments, to_dict

    suites = {n.split("/")[-1]: n for n in available_experiments() if n.startswith("ablations/")}
    bad = []
    for suite_dir in sorted({p.relative_to(ROOT / "results").parts[0] for p in records}):
        if suite_dir not in suites:
            continue
        _, jobs = plan(suites[suite_dir])  # records are published at the suites' own scale
        for job in jobs:
            rec = record_dir(results_dir(suite_dir), job.point.label, job.seed) / "config.yaml"
            if rec.is_file() and (d := record_differences(read_yaml(rec), to_dict(job.cfg))):
                bad.append(f"{rec}: {d[:4]}")
    assert not bad, bad


if __name__ == "__main__":
    json.dump(snapshot(), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
