"""The researcher-facing surface: lab list / --dry-run / compare, the shared HParams record, quiet runs, sample grids."""
from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys
import warnings

import yaml

from lab.config import ROOT, available_experiments, load_experiment


def _lab(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, **kw)


def test_list_and_help_import_no_torch_and_describe_every_experiment():
    code = ("import sys; from lab.__main__ import main; main(['list']); "
            "assert not {'torch', 'pytorch_lightning', 'datasets'} & set(sys.modules), sorted(sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    names = available_experiments()
    assert len(lines) == len(names)
    for name, line in zip(names, lines):
        assert line.startswith(name) and len(line[len(name):].strip()) > 20, line  # says what it answers
    from lab.cli.info import stated_run_time
    from lab.config import header_comment

    quick = next(line for line in lines if line.startswith("quickstart"))
    stated = stated_run_time(header_comment("quickstart"))
    assert stated and stated in quick  # the run time its YAML header states
    from lab.sweeps.timing import run_time_text

    readme = {row.split("|")[1].strip(" `"): row.split("|")[4] for row in (ROOT / "README.md").read_text().splitlines()
              if row.startswith("| `") and row.count("|") >= 5}
    for name, line in zip(names, lines):  # a suite with published records: the measured time, the README's too
        if measured := run_time_text(ROOT / "results" / Path(name).name):
            assert f"measured {measured}" in line, line
            assert measured in readme.get(name, ""), f"README's run time of {name} must be the records': {measured}"
    r = subprocess.run([sys.executable, "-c", "import sys; from lab.__main__ import main\ntry:\n main(['--help'])\n"
                        "except SystemExit: pass\nassert 'torch' not in sys.modules"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "compare" in r.stdout, r.stderr


def test_dry_run_prints_the_config_and_run_dir_and_creates_nothing(tmp_path):
    runs = tmp_path / "runs"
    r = _lab("run", "tokenizer/bsq", "--dry-run", "preset=smoke", f"runs_dir={runs}", "run_id=mine")
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)  # the printed config is YAML (the run directory is a comment)
    assert cfg["quantizer"]["name"] == "bsq" and cfg["trainer"]["max_steps"] == 4
    assert f"run directory: {runs / 'tokenizer/bsq/mine'}" in r.stdout
    r = _lab("run", "ablations/order", "--dry-run", "preset=smoke", f"runs_dir={runs}")
    assert r.returncode == 0, r.stderr
    for order in ("scale", "raster"):
        assert f"{runs / 'ablations/order'}/order-{order}/s0" in r.stdout
        assert f"generator.order={order}" in r.stdout
    assert not runs.exists()


def _fake_run(path, cfg: dict, metrics: dict | None) -> None:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))


def test_compare_tables_the_differing_keys_and_the_metrics(tmp_path):
    base = {"name": "x", "stage": "tokenizer", "seed": 0, "quantizer": {"name": "bsq", "bits": 16}, "compile": False}
    _fake_run(tmp_path / "suite" / "a" / "s0", base, {"psnr": 20.5, "rfid": 100.0, "per_scale": {"scale": [1]}})
    _fake_run(tmp_path / "suite" / "b" / "s0", {**base, "quantizer": {"name": "vq", "codebook_size": 4096}},
              {"psnr": 19.25, "rfid": 110.0})
    _fake_run(tmp_path / "other", {**base, "stage": "generator", "seed": 1}, None)
    r = _lab("compare", str(tmp_path / "suite"), str(tmp_path / "other"))
    assert r.returncode == 0, r.stderr
    head, _, *rows = r.stdout.splitlines()
    cols = head.split()
    assert cols[0] == "run" and {"stage", "seed", "quantizer.name", "quantizer.bits", "psnr", "rfid"} <= set(cols)
    assert "compile" not in cols and "name" not in cols  # equal everywhere / bookkeeping
    assert len(rows) == 3 and "20.5" in rows[0] and "19.25" in rows[1] and "running or stopped" in rows[2]
    out = tmp_path / "t.csv"
    r = _lab("compare", str(tmp_path / "suite"), "--csv", str(out))
    assert r.returncode == 0, r.stderr
    import csv

    table = list(csv.DictReader(open(out)))
    assert [row["quantizer.name"] for row in table] == ["bsq", "vq"] and float(table[1]["rfid"]) == 110.0
    bad = _lab("compare", str(tmp_path / "nope"))
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_tokenizer_and_generator_runs_share_one_hparams_schema(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from lab.config.runs import run_info
    from lab.runtime import tracking

    tok = run_info(load_experiment("tokenizer/vq", ["preset=smoke"]))
    gen = run_info(load_experiment("ablations/head_index_vs_bitwise", ["preset=smoke", "head.name=index"]))
    sweep_run = tmp_path / "ablations" / "head" / "vq-2-12_head-index" / "s0"
    sweep_run.mkdir(parents=True)
    (sweep_run.parent.parent / "sweep.json").write_text(json.dumps({"suite": "ablations/head_index_vs_bitwise", "runs": [
        {"point": "vq-2-12_head-index", "values": {"case": "vq-2^12", "head.name": "index"}, "seed": 0,
         "run_dir": "vq-2-12_head-index/s0"}]}))
    hp_tok, hp_gen = tracking.run_hparams(tok, tmp_path / "tok"), tracking.run_hparams(gen, sweep_run)
    assert list(hp_tok) == list(hp_gen) == list(tracking.HPARAM_KEYS)
    assert hp_gen["Run"] == "ablations/head_index_vs_bitwise case=vq-2^12 head.name=index s0"
    assert hp_tok["Stage"] == "tokenizer" and hp_tok["quantizer.codebook_size"] == 4096.0
    assert hp_tok["quantizer.bits"] != hp_tok["quantizer.bits"]  # NaN: a key this run does not have
    assert tracking.final_scalars(gen, {"val_loss": 8.5, "gfid": 100.0})["z_final/val_index_ce"] == 8.5

    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    experiments = []
    for name, hp in (("tok", hp_tok), ("gen", hp_gen)):
        class Logger:  # the part of Lightning's TensorBoardLogger that write_hparams uses
            experiment = SummaryWriter(str(tmp_path / "tb" / name))
        tracking.write_hparams(Logger, hp)
        Logger.experiment.close()
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(tmp_path / "tb" / name))
        acc.Reload()
        content = acc.PluginTagToContent("hparams")["_hparams_/experiment"]
        experiments.append(HParamsPluginData.FromString(content).experiment)
    assert experiments[0] == experiments[1]  # whichever TensorBoard reads first, every run has its columns
    assert {m.name.tag for m in experiments[0].metric_infos} >= {"z_final/psnr", "z_final/gfid", "z_final/val_bits_bce"}
    assert {m.display_name for m in experiments[0].metric_infos} >= {"psnr", "gfid", "val_bits_bce"}
    # the five columns TensorBoard shows at first (differs, by name) tell runs apart, data.name among them
    shown = sorted(h.name for h in experiments[0].hparam_infos if h.differs)
    assert shown == sorted(tracking.SHOWN) and "data.name" in shown and len(shown) == 5


def test_quiet_hides_only_the_named_messages(monkeypatch):
    from lab.runtime import quiet

    monkeypatch.delenv("BITLAB_VERBOSE", raising=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet.install()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
        warnings.warn("Found 106 module(s) in eval mode at the start of training. This may ...", UserWarning)
        warnings.warn("something new", UserWarning)
    assert [str(w.message) for w in seen] == ["something new"]
    import logging

    rec = lambda msg: logging.LogRecord("pytorch_lightning.utilities.rank_zero", logging.INFO, "", 0, msg, None, None)  # noqa: E731
    assert not quiet._FILTER.filter(rec("💡 Tip: For seamless cloud logging ...")) and quiet._FILTER.filter(rec("Restoring states"))
    monkeypatch.setenv("BITLAB_VERBOSE", "1")
    assert quiet.verbose()


def test_sample_grid_is_upsampled_captioned_and_never_overwrites(tmp_path):
    import torch
    from PIL import Image

    from lab.cli.sample_grid import new_output_path, save_grid

    (tmp_path / "sample.png").write_bytes(b"old")
    first = new_output_path(tmp_path)
    w, h = save_grid(torch.rand(4, 3, 32, 32) * 2 - 1, first, captions=["T-shirt/top", "Trouser", "a", "b"], cell=128)
    assert first.name == "sample-001.png" and new_output_path(tmp_path).name == "sample-002.png"
    assert (tmp_path / "sample.png").read_bytes() == b"old"
    assert w >= 2 * 128 and h > 2 * 128 and Image.open(first).size == (w, h)  # 128 px cells plus caption rows
