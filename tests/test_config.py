"""Config loading: every experiment resolves; every kind of bad input gets one clear paragraph."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from lab import config
from lab.config import ConfigError, available_experiments, load_experiment

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", available_experiments())
def test_every_experiment_resolves_at_every_preset(name):
    for preset in config.PRESETS:
        cfg = load_experiment(name, [f"preset={preset}"])
        assert cfg.name == name and cfg.preset == preset


def test_struct_mode_rejects_new_keys_after_loading():
    cfg = load_experiment("quickstart")
    with pytest.raises(Exception):
        cfg.not_a_key = 1


def test_overrides_win_and_preset_applies():
    cfg = load_experiment("quickstart", ["preset=smoke", "trainer.max_steps=7", "quantizer.bits=8"])
    assert cfg.trainer.max_steps == 7 and cfg.quantizer.bits == 8
    assert cfg.loader.batch_size == load_experiment("quickstart", ["preset=smoke"]).loader.batch_size


def test_changing_component_name_drops_the_old_keywords():
    cfg = load_experiment("tokenizer/vq", ["quantizer.name=bsq"])
    assert dict(cfg.quantizer) == {"name": "bsq"}


def test_unknown_experiment_lists_available():
    with pytest.raises(ConfigError, match="Unknown experiment 'quickstrat'.*quickstart"):
        load_experiment("quickstrat")


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"Unknown key 'trainer.max_step'.*max_steps"):
        load_experiment("quickstart", ["trainer.max_step=3"])
    with pytest.raises(ConfigError, match=r"Unknown key 'optim.learning_rat'.*learning_rate"):
        load_experiment("quickstart", ["optim.learning_rat=3"])
    with pytest.raises(ConfigError, match=r"Unknown key 'quantizer.bitz'.*bits"):
        load_experiment("quickstart", ["quantizer.bitz=3"])


def test_unknown_component_lists_registry():
    with pytest.raises(ConfigError, match=r"Unknown quantizer 'bsqq'.*Valid: bsq, fsq, lfq, vq"):
        load_experiment("quickstart", ["quantizer.name=bsqq"])
    with pytest.raises(ConfigError, match=r"Unknown data 'emoji'.*emoji32"):
        load_experiment("quickstart", ["data.name=emoji"])


def test_wrong_type_names_key_and_expected_type():
    with pytest.raises(ConfigError, match=r"'seed'.*expected int"):
        load_experiment("quickstart", ["seed=abc"])
    with pytest.raises(ConfigError, match=r"'quantizer.bits'.*expected int"):
        load_experiment("quickstart", ["quantizer.bits=many"])
    with pytest.raises(ConfigError, match=r"'trainer.max_steps'.*expected int"):
        load_experiment("quickstart", ["trainer.max_steps=1.5"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        load_experiment("quickstart", ["trainer.max_steps"])


def test_unknown_preset():
    with pytest.raises(ConfigError, match="Unknown preset 'tiny'.*smoke"):
        load_experiment("quickstart", ["preset=tiny"])


def test_malformed_yaml_gives_line_number(tmp_experiments):
    (tmp_experiments / "broken.yaml").write_text("stage: tokenizer\nquantizer: {name: bsq\ntrainer:\n  max_steps: 3\n")
    with pytest.raises(ConfigError, match=r"Malformed YAML in .*broken.yaml at line \d+"):
        load_experiment("broken")


def test_unknown_key_in_experiment_file_names_the_file(tmp_experiments):
    (tmp_experiments / "typo.yaml").write_text("stage: tokenizer\noptim: {learning_rte: 0.1}\n")
    with pytest.raises(ConfigError, match=r"Unknown key 'optim.learning_rte' in .*typo.yaml.*learning_rate"):
        load_experiment("typo")


def _cli(*args, runs_dir):
    return subprocess.run(
        [sys.executable, "-m", "lab", "run", *args, f"runs_dir={runs_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        (["no_such_experiment"], "Unknown experiment"),
        (["quickstart", "trainer.max_stepz=3"], "Unknown key 'trainer.max_stepz'"),
        (["quickstart", "quantizer.name=nope"], "Unknown quantizer 'nope'"),
        (["quickstart", "loader.batch_size=big"], "Wrong type for 'loader.batch_size'"),
        (["quickstart", "quantizer={name: vq, codebook_size: 18446744073709551616}"], "use bsq"),
        (["quickstart", "quantizer={name:bsq,bits:8}"], "without a space after the colon"),
    ],
)
def test_cli_errors_are_one_paragraph_and_create_no_run_dir(tmp_path, args, expected):
    runs = tmp_path / "runs"
    r = _cli(*args, runs_dir=runs)
    assert r.returncode != 0
    assert expected in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not runs.exists()


@pytest.mark.parametrize("node, message", [
    ({"name": "lfq", "bits": 40}, "bits must be in 1..30"),
    ({"name": "vq", "codebook_size": 2**64}, "codebook_size must be in 2..2^30"),
    ({"name": "bsq", "bits": 0}, "bits >= 1"),
])
def test_impossible_quantizers_are_config_errors(node, message):
    """The constructor's range checks run when the config is loaded (on the meta device: nothing allocated)."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.load_experiment("quickstart", [f"quantizer={node}"])


def test_guidance_is_named_guidance_and_the_old_cfg_key_still_reads(tmp_path, capsys):
    cfg = load_experiment("generator/c2i_fashion", ["sample.cfg=3.5", "preset=smoke"])
    assert cfg.sample.guidance == 3.5 and "cfg" not in cfg.sample
    assert "sample.cfg in the command line is now sample.guidance" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="sets both sample.cfg and sample.guidance"):
        load_experiment("generator/c2i_fashion", ["sample.cfg=3", "sample.guidance=2"])
    # a run recorded by 0.1 (sample.cfg in its config.yaml) compares equal to the same run under the new name
    from lab.config.runs import read_config
    from lab.config.runs import config_differences

    old = tmp_path / "config.yaml"
    old.write_text("sample:\n  cfg: 2.0\n  cfg_schedule: constant\n")
    assert config_differences(read_config(old), {"sample": {"guidance": 2.0, "guidance_schedule": "constant"}}) == []
