"""Issue 21: every check that needs no training runs before anything is written, and --dry-run makes each of them;
files read as data are checked as data; a refused resume changes nothing. In-process and fast: every case here
is refused before the data or a model is built."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from cli_helpers import one_paragraph as _one_paragraph
from cli_helpers import run_main as _main
import torch

from lab.config import load_experiment
from lab.core.registry import save_config
from lab.runtime import signals
from lab.stages.common import resolve_run_settings






BAD_VALUES = [
    ("quickstart", "optim.learning_rate=0", ["optim.learning_rate=0", "> 0"]),
    ("quickstart", "optim.learning_rate=-1", ["optim.learning_rate=-1", "> 0"]),
    ("quickstart", "optim.betas=[2,3]", ["optim.betas=[2, 3]", "[0, 1)"]),
    ("quickstart", "optim.betas=[0.9]", ["optim.betas=[0.9]", "two numbers"]),
    ("quickstart", "optim.weight_decay=-0.1", ["optim.weight_decay=-0.1", ">= 0"]),
    ("quickstart", "optim.min_lr_ratio=5", ["optim.min_lr_ratio=5", "[0, 1]"]),
    ("quickstart", "optim.ema_decay=1", ["optim.ema_decay=1", "[0, 1)"]),
    ("quickstart", "optim.warmup_steps=-1", ["optim.warmup_steps=-1", ">= 0"]),
    ("quickstart", "loss.lpips_weight=-1", ["loss.lpips_weight=-1", ">= 0"]),
    ("quickstart", "loss.recon=l3", ["loss.recon='l3'", "l1, l2"]),
    ("quickstart", "loss.lpips_size=0", ["loss.lpips_size=0", ">= 1 or null"]),
    ("quickstart", "trainer.gradient_clip_val=-1", ["trainer.gradient_clip_val=-1", ">= 0"]),
    ("quickstart", "trainer.val_check_interval=0", ["trainer.val_check_interval=0"]),
    ("quickstart", "trainer.limit_val_batches=1.5", ["trainer.limit_val_batches=1.5"]),
    ("quickstart", "eval.label_noise=[-1]", ["eval.label_noise=[-1]", ">= 0"]),
    ("quickstart", "eval.lpips_size=-2", ["eval.lpips_size=-2"]),
    ("quickstart", "loader.global_batch_size=0", ["loader.global_batch_size=0"]),
    ("quickstart", "data.val_fraction=1.5", ["data.val_fraction=1.5", "[0, 1)"]),
    ("quickstart", "data.limit=0", ["data.limit=0", ">= 1"]),
    ("quickstart", "tokenizer.scales=[1,3,2]", ["tokenizer.scales=[1, 3, 2]", "grow"]),
    ("quickstart", "tokenizer.prefix_prob=2", ["tokenizer.prefix_prob=2", "[0, 1]"]),
    ("quickstart", "tokenizer.latent_dim=0", ["tokenizer.latent_dim=0", ">= 1"]),
    ("quickstart", "loader.image_size=48", ["loader.image_size=48", "loader.image_size=32", "tokenizer.scales"]),
    ("quickstart", "loader.image_size=30", ["loader.image_size=30", "multiple of 4"]),
    ("quickstart", "name=mine", ["name='mine'", "not a key to set", "runs_dir"]),
    ("generator/c2i_fashion", "tokenizer_train.learning_rate=0", ["tokenizer_train.learning_rate=0", "> 0"]),
    ("generator/c2i_fashion", "generator.dropout=1", ["generator.dropout=1", "[0, 1)"]),
    ("generator/c2i_fashion", "correction={name: bitflip, p_max: 3}", ["correction.p_max=3", "[0, 1]"]),
    ("generator/c2i_fashion", "sample.guidance_schedule=cubic", ["sample.guidance_schedule='cubic'", "linear"]),
]


@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize("name, override, expected", BAD_VALUES, ids=[b[1] for b in BAD_VALUES])
def test_out_of_range_values_are_refused_by_run_and_dry_run(name, override, expected, dry, capsys, tmp_path):
    runs = tmp_path / "runs"
    code, err = _main(capsys, "run", name, override, "preset=smoke", f"runs_dir={runs}", *(["--dry-run"] if dry else []))
    msg = _one_paragraph(code, err, *expected)
    assert "data.size" not in msg
    assert not runs.exists()


def _machine_cases(tmp_path: Path) -> list[tuple[list[str], list[str]]]:
    cases = [
        (["quickstart", f"data={{name: imagefolder, path: {tmp_path / 'nowhere'}}}"], ["data.path=", "no such folder"]),
        # emoji32 at data.limit=40 holds 4 validation images: too few for FID, and fid_samples cannot add any
        (["quickstart", "data.limit=40", "eval.fid_samples=16"], ["split of", "data.val_fraction"]),
        (["quickstart", "resume=true", "run_id=nope"], ["resume=true", "does not exist", "nothing to resume"]),
        (["quickstart", "resume=true"], ["resume=true", "no run of 'quickstart'"]),
    ]
    if not torch.cuda.is_available():
        cases.append((["quickstart", "trainer.accelerator=gpu"], ["trainer.accelerator=gpu", "no CUDA GPU", "accelerator=cpu"]))
    return cases


@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize("case", range(5))
def test_machine_and_disk_checks_come_before_anything_and_in_dry_run(case, dry, capsys, tmp_path):
    cases = _machine_cases(tmp_path)
    if case >= len(cases):
        pytest.skip("this machine has a GPU")
    args, expected = cases[case]
    runs = tmp_path / "runs"
    code, err = _main(capsys, "run", *args, "preset=smoke", f"runs_dir={runs}", *(["--dry-run"] if dry else []))
    _one_paragraph(code, err, *expected)
    assert not runs.exists()


# ------------------------------------------------------------------------------------------------ resume
def _fake_run(tmp_path: Path, overrides: list[str], finished: bool = True) -> tuple[Path, list[str]]:
    """A run directory as a finished run leaves it (config.yaml as the run records it, metrics.json, a
    checkpoint), without training. -> (run dir, the overrides it ran with)."""
    ov = ["preset=smoke", f"runs_dir={tmp_path / 'runs'}", "run_id=a", *overrides]
    cfg = load_experiment("quickstart", ov)
    resolved = copy.deepcopy(cfg)
    resolve_run_settings(resolved, verbose=False)
    run_dir = tmp_path / "runs" / "quickstart" / "a"
    (run_dir / "checkpoints").mkdir(parents=True)
    save_config(resolved, run_dir / "config.yaml")
    if finished:
        (run_dir / "metrics.json").write_text(json.dumps({"psnr": 20.0}))
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    return run_dir, ov


def _snapshot(run_dir: Path) -> dict:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.rglob("*") if p.is_file()}


def test_a_refused_resume_changes_nothing_in_the_run(capsys, tmp_path):
    """A finished run extended on purpose, whose last.ckpt is corrupt: refused before metrics.json is renamed,
    config.yaml rewritten or resumes.json appended to."""
    run_dir, ov = _fake_run(tmp_path, [])
    before = _snapshot(run_dir)
    code, err = _main(capsys, "run", "quickstart", *ov, "resume=true", "trainer.max_steps=8",
                      "resume_allow=[trainer.max_steps]")
    _one_paragraph(code, err, "Cannot read the checkpoint", "last.ckpt")
    assert _snapshot(run_dir) == before and not (run_dir / "resumes.json").exists()
    # a changed key without resume_allow: refused by the config comparison, before the data is built
    code, err = _main(capsys, "run", "quickstart", *ov, "resume=true", "optim.learning_rate=0.01")
    _one_paragraph(code, err, "different configuration", "optim.learning_rate")
    assert _snapshot(run_dir) == before


def test_resume_of_a_run_whose_config_holds_a_python_tag_names_the_file(capsys, tmp_path):
    run_dir, ov = _fake_run(tmp_path, [], finished=False)
    path = run_dir / "config.yaml"
    path.write_text(path.read_text() + "evil: !!python/object/apply:os.system ['echo pwned']\n")
    before = _snapshot(run_dir)
    code, err = _main(capsys, "run", "quickstart", *ov, "resume=true")
    _one_paragraph(code, err, str(path), "YAML tag", "python/object/apply:os.system", "nothing of it was used")
    assert "pwned" not in capsys.readouterr().out and _snapshot(run_dir) == before


# ------------------------------------------------------------------------------------------------ files as data
DAMAGED = [
    ("config.yaml", "stage: tokenizer\nx: !!python/name:os.system\n", ["config.yaml", "YAML tag"]),
    ("config.yaml", "stage: tokenizer\ntrainer: {max_steps: 4\n", ["config.yaml", "malformed YAML", "line"]),
    ("config.yaml", "- just\n- a list\n", ["config.yaml", "a list, not a mapping"]),
    ("metrics.json", '{"psnr": 21.0, "ssim', ["metrics.json", "malformed JSON", "line 1"]),
    ("metrics.json", "[1, 2]", ["metrics.json", "a list, not a mapping"]),
]


@pytest.mark.parametrize("file, text, expected", DAMAGED, ids=[f"{d[0]}-{i}" for i, d in enumerate(DAMAGED)])
def test_compare_names_a_damaged_file(file, text, expected, capsys, tmp_path):
    run = tmp_path / "runs" / "x" / "r1"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("stage: tokenizer\nseed: 0\n")
    (run / file).write_text(text)
    code, err = _main(capsys, "compare", str(tmp_path / "runs"))
    _one_paragraph(code, err, "Cannot use", *expected)


def test_report_names_a_damaged_metrics_json(tmp_experiments, capsys, tmp_path):
    from lab.sweeps.plan import plan

    (tmp_experiments / "tiny.yaml").write_text("sweep:\n  optim.learning_rate: [0.001, 0.002]\n")
    ov = ["preset=smoke", f"runs_dir={tmp_path / 'runs'}"]
    _, jobs = plan("tiny", ov)
    for job in jobs:
        resolved = copy.deepcopy(job.cfg)
        resolve_run_settings(resolved, verbose=False)
        job.run_dir.mkdir(parents=True)
        save_config(resolved, job.run_dir / "config.yaml")
        (job.run_dir / "metrics.json").write_text('{"psnr": 20.0}')
    (jobs[0].run_dir / "metrics.json").write_text('{"psnr": 20.0, "lpips"')  # truncated
    code, err = _main(capsys, "report", "tiny", *ov, "--out", str(tmp_path / "out"))
    _one_paragraph(code, err, str(jobs[0].run_dir / "metrics.json"), "malformed JSON")


# ------------------------------------------------------------------------------------------------ lab sample
def test_sample_on_a_folder_without_checkpoint_speaks_of_its_argument(capsys, tmp_path):
    code, err = _main(capsys, "sample", str(tmp_path))
    msg = _one_paragraph(code, err, str(tmp_path), "no checkpoint there", "generator run directory")
    assert "tokenizer_from" not in msg


@pytest.mark.parametrize("args, expected", [(["--size", "0"], "--size=0"), (["--size", "100000"], "--size=100000"),
                                            (["--seed", "-1"], "--seed=-1")])
def test_sample_size_and_seed_are_range_checked(args, expected, capsys, tmp_path):
    code, err = _main(capsys, "sample", str(tmp_path), *args)
    _one_paragraph(code, err, expected, "out of range")


def test_list_classes_reads_the_names_without_building_the_model(capsys, tmp_path, monkeypatch):
    from lab.cli import sample as cli_sample
    from lab.cli import sample_grid
    from lab.stages import generator

    def no_model(*a, **k):
        raise AssertionError("--list-classes built the model")

    monkeypatch.setattr(generator, "load_generator", no_model)
    monkeypatch.setattr(sample_grid, "class_names", lambda cfg: ["cat", "dog"])
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_experiment("generator/c2i_fashion", ["preset=smoke"])
    save_config(cfg, run / "config.yaml")
    capsys.readouterr()
    cli_sample.cmd_sample(cli_sample_args(run, list_classes=True))
    assert capsys.readouterr().out.split() == ["0", "cat", "1", "dog"]
    (run / "config.yaml").write_text("stage: generator\ndata: !!python/name:os.system\n")
    code, err = _main(capsys, "sample", str(run), "--list-classes")
    _one_paragraph(code, err, str(run / "config.yaml"), "YAML tag")


def cli_sample_args(run: Path, **kw):
    import argparse

    base = dict(run_dir=str(run), prompt=None, cls=None, list_classes=False, n=16, guidance=None,
                guidance_flag="--guidance", temperature=None, top_p=None, top_k=None, seed=0, out=None, size=128,
                no_captions=False)
    return argparse.Namespace(**(base | kw))


# ------------------------------------------------------------------------------------------------ item 2, cheap part
def test_the_busy_cpu_note_prints_once_and_on_rank_zero_only(capsys, monkeypatch):
    from lab.runtime import trainer

    monkeypatch.setattr(trainer, "others_cpu_busy", lambda: 5.0)
    monkeypatch.setattr(trainer, "_CPU_NOTE_SHOWN", [False])
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv("RANK", raising=False)
    trainer.warn_if_cpu_busy("cpu")
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("LOCAL_RANK", "0")
    trainer.warn_if_cpu_busy("cpu")
    trainer.warn_if_cpu_busy("cpu")  # the generator stage's second Trainer
    assert capsys.readouterr().out.count("CPU is already busy") == 1


def test_the_busy_cpu_note_counts_other_processes_not_this_ones_own_work(capsys, monkeypatch):
    """The note is about sharing the cores: this process's own work (a suite's previous run, the tokenizer stage
    before a generator's) must not trigger it, as the load average did; another process spinning must."""
    import os
    import subprocess
    import sys
    import threading
    import time

    from lab.runtime import trainer

    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    worker = threading.Thread(target=spin)
    worker.start()
    try:
        total, others = trainer.cpu_busy(1.0)
    finally:
        stop.set()
        worker.join()
    assert total - others > 0.6, (total, others)  # the spinning thread (about one core) is subtracted as its own

    spin_s = "import time\nt = time.time() + 4\nwhile time.time() < t: pass"
    procs = [subprocess.Popen([sys.executable, "-c", spin_s]) for _ in range(os.cpu_count() or 1)]  # one a core
    try:
        time.sleep(0.3)
        assert trainer.others_cpu_busy(1.0) > 0.6
        monkeypatch.setattr(trainer, "_CPU_NOTE_SHOWN", [False])
        monkeypatch.setenv("LOCAL_RANK", "0")
        trainer.warn_if_cpu_busy("cpu")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert "other processes keep" in capsys.readouterr().out


def test_sigterm_during_the_final_evaluation_says_training_finished(tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "quickstart" / "r1"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    monkeypatch.setattr(signals, "STOPPED", {"signal": "SIGTERM"})
    monkeypatch.setattr(signals, "TRAINED", {"run_dir": run_dir, "step": 150})
    msg = signals.resume_hint("quickstart", ["preset=smoke"], False)
    assert "before a checkpoint was written" not in msg
    assert "during the final evaluation" in msg and "step 150" in msg and "run_id=r1 resume=true" in msg
    monkeypatch.setattr(signals, "TRAINED", {})
    assert "before a checkpoint was written" in signals.resume_hint("quickstart", [], False)


def test_a_stopped_suite_resumes_with_its_own_options(monkeypatch):
    # a suite stopped with --publish and resumed without it would train again the runs its published records hold
    from lab.__main__ import _sweep_options, parse_args

    args = parse_args(["run", "ablations/order", "seeds=[3]", "--publish", "--shard", "2/4"])
    monkeypatch.setattr(signals, "STOPPED", {"signal": "SIGTERM", "run_dir": "runs/x/s3", "step": 40})
    msg = signals.resume_hint(args.name, list(args.overrides), True, _sweep_options(args))
    assert "python -m lab run ablations/order 'seeds=[3]' --publish --shard 2/4`" in msg
    args = parse_args(["run", "ablations/order", "--publish", "elsewhere", "--force"])
    assert _sweep_options(args) == ["--publish", "elsewhere", "--force"]
    assert "--publish" not in signals.resume_hint("ablations/order", [], True, _sweep_options(parse_args(["run", "ablations/order"])))


def test_a_stopped_suite_prints_its_resume_hint_once(monkeypatch, capsys):
    # in a two-process run both ranks get the SIGTERM; only rank 0 prints the command that resumes
    import lab.__main__ as cli
    import lab.runtime.files as files

    def stopped(args):
        signals.STOPPED["signal"] = "SIGTERM"
        raise SystemExit(1)

    monkeypatch.setattr(signals, "STOPPED", {})
    monkeypatch.setattr(signals, "install", lambda: None)
    monkeypatch.setattr(cli, "cmd_run", stopped)
    for rank, printed, code in ((1, False, 0), (0, True, 143)):
        monkeypatch.setattr(files, "process_rank", lambda rank=rank: rank)
        signals.STOPPED.clear()
        with pytest.raises(SystemExit) as e:
            cli.main(["run", "ablations/order", "--publish"])
        assert e.value.code == code  # rank 1 exits 0: Lightning kills rank 0 when a child exits non-zero
        err = capsys.readouterr().err
        assert ("resume with resume=true" in err) is printed
        assert ("--publish" in err) is printed
