"""deepspeed.precision: auto (pretrain/precision.py): bf16 only where the device computes it, else fp32 on a
CPU / fp16 on an old GPU; the run keeps `auto` in config.yaml and records what it resolved to."""
import json

import pytest
import torch
import yaml

from clipforge.modeling.config import ConfigError, load_config
from clipforge.pretrain import precision as precision_module
from clipforge.pretrain.precision import resolve_precision
from tests.pretrain.tiny_run_helpers import rows, run_tiny

CPU = torch.device("cpu")


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, "bf16"), (False, True, "bf16"),
                                                         (False, False, "fp32")])
def test_auto_on_a_cpu_follows_its_bf16_hardware(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    precision, why = resolve_precision("auto", CPU)
    assert precision == expected and why.startswith("auto: this CPU has")


def test_a_torch_without_the_probes_means_no_native_bf16(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert precision_module.cpu_has_native_bf16() is False


@pytest.mark.parametrize("bf16, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda_takes_bf16_where_supported_else_fp16(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "a GPU")
    assert resolve_precision("auto", torch.device("cuda", 0))[0] == expected


@pytest.mark.parametrize("named", ["fp32", "bf16", "fp16"])
def test_a_named_precision_is_kept(named):
    assert resolve_precision(named, CPU) == (named, "as configured")


def test_the_config_accepts_auto_and_refuses_others():
    data = "data.sources=[{path: shards}]", "train.steps=10"
    assert load_config(None, [*data, "deepspeed.precision=auto"]).deepspeed.precision == "auto"
    with pytest.raises(ConfigError, match="deepspeed.precision"):
        load_config(None, [*data, "deepspeed.precision=bf32"])


def test_a_run_at_auto_trains_in_the_resolved_precision_and_records_it(tmp_path):
    expected, _ = resolve_precision("auto", CPU)
    reports = run_tiny(tmp_path, [{"name": "auto", "data": "synthetic", "overrides": [
        "train.steps=2", "deepspeed.zero_stage=2", "deepspeed.precision=auto"]}])
    assert reports["auto"]["code"] == 0
    run = tmp_path / "auto"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["deepspeed"]["precision"] == "auto" and saved["run_info"]["precision"] == expected
    ds = json.loads((run / "deepspeed.json").read_text())
    assert ds["bf16"]["enabled"] is (expected == "bf16") and ds["fp16"]["enabled"] is False
    assert [r["step"] for r in rows(run)] == [1, 2]
    assert f"deepspeed.precision: {expected} (auto: this CPU has" in (tmp_path / "tiny_runs.log").read_text()
