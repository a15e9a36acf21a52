"""trainer.precision: auto and trainer.devices: auto (lab/runtime/machine.py, issue 12): the choice follows the (mocked)
CPU capability and probe, explicit values win, and the resolved values reach config.yaml and metrics.json."""
from __future__ import annotations

import json

import pytest
import yaml

from lab.runtime import machine
from lab.config import load_experiment
from lab.core.registry import ConfigError
from lab.stages.common import resolve_run_settings


@pytest.fixture
def fresh_probe(tmp_path, monkeypatch):
    """An empty probe cache and no probe result inherited through the environment; counts probe runs."""
    monkeypatch.setenv("BITLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(machine._PROBE_ENV, raising=False)
    calls = []

    def fake_probe(speedup):
        def run_probe(seconds: float = 1.0) -> float:
            calls.append(seconds)
            return speedup
        monkeypatch.setattr(machine, "run_probe", run_probe)

    fake_probe.calls = calls
    return fake_probe


def no_native(monkeypatch):
    monkeypatch.setattr(machine, "native_bf16", lambda: (False, "AVX2, no AVX512-BF16/AMX"))


def native(monkeypatch):
    monkeypatch.setattr(machine, "native_bf16", lambda: (True, "AVX512-BF16"))


def test_auto_is_fp32_without_native_bf16_and_runs_no_probe(monkeypatch, fresh_probe):
    no_native(monkeypatch)
    fresh_probe(3.0)  # even a probe claiming bf16 is faster must not be consulted: emulated bf16 is ~70x slower
    value, why = machine.resolve_precision("auto", "cpu")
    assert value == "32-true" and "no native bf16" in why and "AVX2" in why
    assert fresh_probe.calls == []


def test_auto_is_bf16_with_native_bf16_when_the_probe_confirms_it(monkeypatch, fresh_probe, tmp_path):
    native(monkeypatch)
    fresh_probe(2.0)
    value, why = machine.resolve_precision("auto", "cpu")
    assert value == "bf16-mixed" and "AVX512-BF16" in why and "2x faster" in why
    # measured once per machine: cached on disk under the CPU model, capability and torch version
    cache = json.loads((tmp_path / "cache" / "bf16_probe.json").read_text())
    assert cache[machine.probe_key()]["speedup"] == 2.0
    monkeypatch.delenv(machine._PROBE_ENV)
    assert machine.resolve_precision("auto", "cpu")[0] == "bf16-mixed" and len(fresh_probe.calls) == 1


def test_auto_keeps_the_tokenizer_stage_fp32_on_cpus_only(monkeypatch, fresh_probe):
    """The probe predicts matmul-bound steps; the tokenizer's conv steps measured no bf16 gain on a CPU."""
    import torch

    native(monkeypatch)
    fresh_probe(2.0)
    value, why = machine.resolve_precision("auto", "cpu", "tokenizer")
    assert value == "32-true" and "tokenizer" in why
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "NVIDIA H100")
    assert machine.resolve_precision("auto", "gpu", "tokenizer")[0] == "bf16-mixed"


def test_auto_is_fp32_when_native_bf16_is_not_faster(monkeypatch, fresh_probe):
    native(monkeypatch)
    fresh_probe(1.02)  # within noise of fp32: not "measurably faster"
    value, why = machine.resolve_precision("auto", "cpu")
    assert value == "32-true" and "1x faster" in why


def test_auto_on_cuda_with_bf16(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "NVIDIA H100")
    assert machine.resolve_precision("auto", "gpu") == ("bf16-mixed", "bf16-mixed: CUDA NVIDIA H100 supports bf16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert machine.resolve_precision("auto", "gpu")[0] == "32-true"


def test_explicit_precision_is_kept(monkeypatch, fresh_probe, capsys):
    native(monkeypatch)
    fresh_probe(2.0)
    assert machine.resolve_precision("32-true", "cpu") == ("32-true", "explicit trainer.precision=32-true")
    assert machine.resolve_precision("bf16-mixed", "cpu")[0] == "bf16-mixed"
    assert "warning" not in capsys.readouterr().out  # native bf16: nothing to warn about


def test_explicit_bf16_without_native_bf16_warns_with_the_measured_slowdown(monkeypatch, fresh_probe, capsys):
    no_native(monkeypatch)
    fresh_probe(1 / 70)
    value, why = machine.resolve_precision("bf16-mixed", "cpu")
    assert value == "bf16-mixed"  # kept: an explicit value wins
    out = capsys.readouterr().out
    assert "warning: trainer.precision=bf16-mixed" in out and "70x slower" in out and "auto" in out
    assert "70x slower" in why


def test_resolved_precision_is_written_to_the_config(monkeypatch, fresh_probe, tmp_path):
    """What config.yaml records (lab.config.save_config of the resolved config): the concrete value and why."""
    from lab.core.registry import save_config

    for has_native, expected in ((False, "32-true"), (True, "bf16-mixed")):
        (native if has_native else no_native)(monkeypatch)
        fresh_probe(2.5)
        cfg = load_experiment("generator/c2i_fashion")
        assert cfg.trainer.precision == "auto"
        record = resolve_run_settings(cfg, verbose=False)
        save_config(cfg, tmp_path / "config.yaml")
        saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
        assert saved["trainer"]["precision"] == expected == record["precision"]
        assert saved["resolved"]["precision_requested"] == "auto"
        assert saved["resolved"]["precision_reason"].startswith(expected)
        assert machine.metrics_record(cfg["resolved"])["precision"] == expected
        # and which libraries computed the numbers: the installed versions, in config.yaml and metrics.json
        from importlib.metadata import version
        assert saved["resolved"]["versions"]["vector-quantize-pytorch"] == version("vector-quantize-pytorch")
        assert machine.metrics_record(cfg["resolved"])["versions"]["torch"] == version("torch")
        json.dumps(machine.metrics_record(cfg["resolved"]))  # as metrics.json is written: plain values only


def test_auto_that_resolves_to_fp32_keeps_the_fp32_tokenizer_cache_key(monkeypatch, fresh_probe):
    """The tokenizer stage a generator experiment derives: `auto` resolving to 32-true hashes like 32-true always
    did (cached tokenizers stay valid); resolving to bf16 is another cache entry, that of an explicit bf16."""
    from lab.stages.generator import tokenizer_config

    def name(*over):
        return tokenizer_config(load_experiment("generator/c2i_fashion", ["tokenizer_train.precision=null", *over]))["name"]

    fresh_probe(2.0)
    fp32, bf16 = name("trainer.precision=32-true"), name("trainer.precision=bf16-mixed")
    assert bf16 != fp32
    for cpu in (no_native, native):  # a CPU's tokenizer stage is fp32 under auto, native bf16 or not
        cpu(monkeypatch)
        assert name() == fp32
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "NVIDIA H100")
    assert name("trainer.accelerator=gpu") == bf16  # on a GPU: bf16, the cache entry of an explicit bf16


def test_devices_auto_layout_keeps_the_global_batch(monkeypatch):
    assert machine.cpu_processes(32, cores=1)[0] == 1
    assert machine.cpu_processes(32, cores=2)[0] == 2
    assert machine.cpu_processes(32, cores=16)[0] == 2  # at least 16 images per process
    assert machine.cpu_processes(48, cores=4)[0] == 3
    for cores, devices, batch, strategy in ((1, 1, 32, "auto"), (2, 2, 16, "ddp")):
        monkeypatch.setattr(machine, "usable_cores", lambda cores=cores: cores)
        cfg = load_experiment("quickstart", ["trainer.precision=32-true"])
        record = resolve_run_settings(cfg, verbose=False)
        assert (cfg.trainer.devices, cfg.loader.batch_size, cfg.trainer.strategy) == (devices, batch, strategy)
        assert record["devices"] * record["batch_size_per_process"] == cfg.loader.global_batch_size == 32
    # the smoke preset keeps one process and its own small batch
    cfg = load_experiment("quickstart", ["preset=smoke"])
    resolve_run_settings(cfg, verbose=False)
    assert (cfg.trainer.devices, cfg.loader.batch_size, cfg.trainer.precision) == (1, 8, "32-true")


def test_the_placement_is_the_trainer_nodes_keys_with_lightnings_defaults():
    from lab.config import placement
    from lab.core.settings import Placement

    assert placement({"max_steps": 5}) == Placement()  # a key the node lacks: Lightning's default
    p = placement({"devices": [0, 1], "precision": None, "accelerator": "gpu", "num_nodes": 2, "gradient_clip_val": 1})
    assert (p.devices, p.precision, p.accelerator, p.num_nodes) == ((0, 1), "32-true", "gpu", 2)
    cfg = load_experiment("quickstart", ["trainer.devices=auto", "loader.global_batch_size=32"])
    assert placement(cfg.trainer).devices == "auto"  # built from the validated config's DictConfig too


def test_layout_errors_are_config_errors():
    with pytest.raises(ConfigError, match="loader.global_batch_size"):
        resolve_run_settings(load_experiment("quickstart", ["loader.global_batch_size=null",
                                                                    "trainer.precision=32-true"]), verbose=False)
    with pytest.raises(ConfigError, match="does not split evenly over 3 processes"):
        resolve_run_settings(load_experiment("quickstart", ["trainer.devices=3", "trainer.precision=32-true"]),
                                     verbose=False)


@pytest.mark.slow
def test_a_run_records_the_resolved_precision(monkeypatch, tmp_path):
    """A generator smoke run with precision auto on a (mocked) native-bf16 CPU: its tokenizer stage trains in fp32,
    the transformer under bf16-mixed, and each run's config.yaml and metrics.json record the choice and why."""
    from lab.stages.run import run_experiment

    native(monkeypatch)
    monkeypatch.setattr(machine, "bf16_speedup", lambda refresh=False: (2.0, "cached"))
    cfg = load_experiment("generator/c2i_fashion", ["preset=smoke", f"runs_dir={tmp_path}", "trainer.precision=auto",
                                                    "tokenizer_train.precision=null", "eval.fid_samples=0",
                                                    "trainer.max_steps=2", "tokenizer_train.max_steps=2"])
    run_dir, metrics = run_experiment(cfg)
    tok_dir = next((tmp_path / "_tokenizers").glob("*/run"))
    for d, expected, words in ((run_dir, "bf16-mixed", "2x faster"), (tok_dir, "32-true", "tokenizer stage")):
        saved = yaml.safe_load((d / "config.yaml").read_text())
        assert saved["trainer"]["precision"] == expected and words in saved["resolved"]["precision_reason"]
        m = json.loads((d / "metrics.json").read_text())
        assert m["precision"] == expected and m["precision_reason"] == saved["resolved"]["precision_reason"]
        assert m["steps"] == m["steps_planned"] == 2
