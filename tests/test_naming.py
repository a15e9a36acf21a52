"""Run names and tags (lab/runtime/naming.py) and what TensorBoard shows of a run (lab/runtime/tracking.py):
names that say what a run changes, checked before anything is written, never a difference for a resume or a
published record; settings as HParams and text, not scalar charts; the learning curves first; an image grid."""
from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest
import torch
import yaml

from lab.config import ConfigError, load_experiment
from lab.core.registry import save_config, to_dict


@pytest.mark.parametrize("name, overrides, expected", [
    ("quickstart", [], "quickstart"),
    ("quickstart", ["data.name=imagefolder", "data.path=/tmp"], "quickstart-imagefolder"),
    ("quickstart", ["preset=smoke", "quantizer.name=vq"], "quickstart-vq"),
    ("tokenizer/bsq", ["quantizer.bits=12"], "bsq-12bit"),
    ("generator/c2i_fashion", ["preset=smoke"], "c2i_fashion"),  # the preset's generator size is the experiment's
    ("generator/c2i_fashion", ["preset=smoke", "head.name=index", "generator.size=s"], "c2i_fashion-index-size-s"),
    ("tokenizer/bsq", ["run_name=mine"], "mine"),
])
def test_default_name_says_what_differs_from_the_experiment(name, overrides, expected):
    assert load_experiment(name, overrides)["run_name"] == expected


def test_tokenizer_runs_do_not_name_generator_keys():
    cfg = load_experiment("quickstart", ["data.name=imagefolder", "data.path=/tmp", "tags=[photos,first]"])
    assert cfg["run_name"] == "quickstart-imagefolder" and list(cfg["tags"]) == ["photos", "first"]


@pytest.mark.parametrize("override, message", [
    ("run_name=../up", "run_name='../up' is not a valid directory name"),
    ("run_name=a/b", "is not a valid directory name"),
    ("run_name=" + "x" * 81, "keep it to 80"),
    ("tags=[two words]", "'two words' is not a tag"),
    ("tags=[ok,[nested]]", "is not a tag"),
    ("tags=photos", "Wrong type for 'tags'"),
])
def test_bad_names_and_tags_are_config_errors_before_anything_is_written(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_experiment("quickstart", [override, f"runs_dir={tmp_path / 'runs'}"])
    assert not (tmp_path / "runs").exists()


def test_a_numeric_name_is_a_name():
    assert load_experiment("quickstart", ["run_name=2024"])["run_name"] == "2024"


def test_old_records_and_resumes_ignore_names_and_tags(tmp_path):
    from lab.config.runs import check_resume, read_config
    from lab.config.runs import config_differences
    from lab.sweeps.records import record_differences

    new = load_experiment("quickstart", ["preset=smoke", "run_name=renamed", "tags=[a]"])
    old = to_dict(new)
    del old["run_name"], old["tags"]  # a config.yaml written before names existed
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert config_differences(read_config(tmp_path / "config.yaml"), to_dict(new)) == []
    assert record_differences(read_config(tmp_path / "config.yaml"), to_dict(new)) == []
    # a resume under another name and other tags continues the same run
    save_config(load_experiment("quickstart", ["preset=smoke"]), tmp_path / "config.yaml")
    check_resume(new, tmp_path)


def test_run_directory_is_named_run_id_kept_and_resume_finds_the_latest(tmp_path):
    from lab.runtime.runlock import unlock
    from lab.stages.common import _make_run_dir, resume_dir

    runs = f"runs_dir={tmp_path}"
    a, _ = _make_run_dir(load_experiment("quickstart", [runs, "data.name=imagefolder", "data.path=/tmp"]))
    assert a.parent == tmp_path / "quickstart" and a.name.startswith("quickstart-imagefolder-") and a.name.endswith("-s0")
    b, _ = _make_run_dir(load_experiment("quickstart", [runs, "run_name=zzz", "seed=3"]))
    assert b.name.startswith("zzz-") and b.name.endswith("-s3")
    c, _ = _make_run_dir(load_experiment("quickstart", [runs, "run_id=exactly-this"]))
    assert c == tmp_path / "quickstart" / "exactly-this"
    for i, d in enumerate((b, c, a)):  # a's checkpoint is the newest, whatever the names' order
        unlock(d)
        (d / "checkpoints").mkdir()
        (d / "checkpoints" / "last.ckpt").write_bytes(b"x")
        os.utime(d / "checkpoints" / "last.ckpt", (time.time() + i, time.time() + i))
    assert resume_dir(load_experiment("quickstart", [runs, "resume=true"])) == a


def test_a_resume_keeps_the_runs_name_and_tags_unless_given_others(tmp_path):
    from lab.runtime.runlock import unlock
    from lab.stages.common import _make_run_dir

    runs = f"runs_dir={tmp_path}"
    first = load_experiment("quickstart", [runs, "preset=smoke", "run_name=mine", "tags=[t]"])
    run_dir, _ = _make_run_dir(first)
    save_config(first, run_dir / "config.yaml")
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    unlock(run_dir)
    again = load_experiment("quickstart", [runs, "preset=smoke", "resume=true"])
    assert _make_run_dir(again) == (run_dir, True)
    assert again["run_name"] == "mine" and list(again["tags"]) == ["t"]
    unlock(run_dir)
    renamed = load_experiment("quickstart", [runs, "preset=smoke", "resume=true", "run_name=other", "tags=[u]"])
    assert _make_run_dir(renamed) == (run_dir, True)  # allowed: names and tags change no result
    assert renamed["run_name"] == "other" and list(renamed["tags"]) == ["u"]
    unlock(run_dir)


def test_end_summary_names_the_run_its_data_and_tags(tmp_path):
    from lab.stages.common import summary

    cfg = load_experiment("quickstart", ["data.name=imagefolder", "data.path=/tmp", "tags=[photos]"])
    text = summary(tmp_path, {"psnr": 20.0}, cfg)
    assert "name: quickstart-imagefolder" in text and "data: imagefolder" in text and "tags: photos" in text


def _events(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_gets_settings_as_hparams_and_text_curves_first_and_an_image(tmp_path):
    from lab.config.runs import run_info
    from lab.runtime import tracking

    cfg = run_info(load_experiment("quickstart", ["preset=smoke", "tags=[x]"]))
    run_dir = tmp_path / "quickstart-20250101-000000-s0"
    lg = tracking.build_loggers(cfg, run_dir)[0]
    lg.log_metrics({"epoch": 0, "train/loss": 1.0, "val/psnr": 9.0}, step=1)  # Lightning adds epoch; dropped
    metrics = {"psnr": 20.0, "rfid": 100.0, "kid_subsets": 10, "fid_samples": 16, "devices": 1,
               "batch_size_per_process": 8, "lpips_size": 64, "precision": "32-true", "cpu": "test",
               "per_scale": {"scale": [1, 2], "prefix_psnr": [8.0, 9.0]}}
    grid = torch.rand(3, 8, 16)
    tracking.log_final(SimpleNamespace(loggers=[lg], global_step=4, default_root_dir=str(run_dir)), cfg, metrics,
                       images={"reconstructions": grid})
    acc = _events(run_dir / "tb")
    scalars = acc.Tags()["scalars"]
    assert "epoch" not in scalars and "z_final/psnr" in scalars and "z_final/rfid" in scalars
    settings = ("kid_subsets", "fid_samples", "devices", "batch_size_per_process", "lpips_size")
    assert not [t for t in scalars if t.split("/")[-1] in settings]  # settings are no scalar charts
    assert [e.step for e in acc.Scalars("val_scale_final/prefix_psnr")] == [1, 2]  # a curve along the scales
    groups = list(dict.fromkeys(t.split("/")[0] for t in sorted(scalars)))
    assert groups[:2] == ["train", "val"], groups  # TensorBoard opens the first two groups
    assert acc.Tags()["images"] == ["z_final/reconstructions"]
    text = acc.Tensors("summary/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| kid_subsets | 10 |" in text and "| Tags | x |" in text and "| cpu | test |" in text
    hp = tracking.run_hparams(cfg, run_dir, metrics)
    assert hp["kid_subsets"] == 10.0 and hp["precision"] == "32-true" and hp["Name"] == "quickstart"
    assert hp["Run"] == run_dir.name and hp["data.name"] == "emoji32"


def test_learning_rate_is_a_training_curve():
    from lab.train.optim import configure

    out = configure(torch.nn.Linear(2, 2), load_experiment("quickstart")["optim"], 10)
    assert out["lr_scheduler"]["name"] == "train/lr"


def test_run_help_lists_the_special_keys(capsys):
    from lab.__main__ import main

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for key in ("preset=", "tokenizer_from=", "resume=", "resume_allow=", "run_name=", "tags=", "seed=",
                "runs_dir=", "publish"):
        assert f"\n  {key}" in out or f"  {key}" in out, key
    assert max(len(line) for line in out.split("special keys", 1)[1].splitlines()) <= 110
