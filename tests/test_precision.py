"""Precision chosen per machine: auto from the CPU's bf16 support and a cached timing, explicit
values honoured, fp16 on a CPU and unknown values refused naming the setting."""

from __future__ import annotations

import json

import pytest
import torch

from ssl_photoz.cli import build_parser
from ssl_photoz.learn import precision as prec

PROBE = {"arch": "resnet_small", "width": 8}


def _cpu(flags: set[str], model: str = "Test CPU 9000", machine: str = "x86_64") -> dict:
    return {"model": model, "machine": machine, "flags": flags, "capability": "AVX512"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache directory, and a measurement that must not run unless a test allows it."""
    monkeypatch.setenv("SSL_PHOTOZ_CACHE_DIR", str(tmp_path / "cache"))

    def no_timing(probe, *args, **kwargs):
        raise AssertionError("timed although it should not have")

    monkeypatch.setattr(prec, "measure_cpu_step_rates", no_timing)
    return tmp_path / "cache" / "precision.json"


def _rates(monkeypatch, fp32: float, bf16: float) -> list:
    calls = []

    def fake(probe, *args, **kwargs):
        calls.append(probe)
        return {"fp32_images_per_s": fp32, "bf16_images_per_s": bf16, "batch": 32, "steps": 3}

    monkeypatch.setattr(prec, "measure_cpu_step_rates", fake)
    return calls


def test_auto_picks_fp32_on_a_cpu_without_native_bf16(cache, monkeypatch):
    monkeypatch.setattr(prec, "cpu_info", lambda: _cpu({"avx2", "avx512f", "fma"}))
    chosen = prec.resolve("auto", "cpu", PROBE)
    assert chosen.name == "fp32" and chosen.requested == "auto"
    assert "no native bf16" in chosen.reason and "Test CPU 9000" in chosen.reason
    assert not chosen.amp and not chosen.grad_scaler().is_enabled()
    assert not cache.exists()  # decided from the flags alone, nothing timed


def test_auto_picks_bf16_where_native_and_faster_then_reuses_the_timing(cache, monkeypatch):
    monkeypatch.setattr(prec, "cpu_info", lambda: _cpu({"avx512f", "avx512_bf16"}))
    calls = _rates(monkeypatch, fp32=20.0, bf16=40.0)
    chosen = prec.resolve("auto", "cpu", PROBE)
    assert chosen.name == "bf16" and chosen.dtype is torch.bfloat16
    assert "avx512_bf16" in chosen.reason and "2.00x" in chosen.reason
    assert "measured now" in chosen.reason
    again = prec.resolve("auto", "cpu", PROBE)  # from the cache: no second timing
    assert again.name == "bf16" and "cached in" in again.reason and len(calls) == 1
    entries = json.loads(cache.read_text())["entries"]
    (key,) = entries
    assert "Test CPU 9000" in key and torch.__version__ in key and "resnet_small w8" in key
    # another network is timed on its own
    prec.resolve("auto", "cpu", {"arch": "resnet_small", "width": 4})
    assert len(calls) == 2


def test_auto_keeps_fp32_where_native_bf16_is_not_faster(cache, monkeypatch):
    monkeypatch.setattr(prec, "cpu_info", lambda: _cpu({"amx_bf16", "avx512_bf16"}))
    _rates(monkeypatch, fp32=20.0, bf16=21.0)  # 1.05x: below the margin
    chosen = prec.resolve("auto", "cpu", PROBE)
    assert chosen.name == "fp32" and "1.05x" in chosen.reason


def test_arm_bf16_feature_counts_as_native(cache, monkeypatch):
    monkeypatch.setattr(prec, "cpu_info", lambda: _cpu({"asimd", "bf16"}, machine="aarch64"))
    _rates(monkeypatch, fp32=10.0, bf16=30.0)
    assert prec.resolve("auto", "cpu", PROBE).name == "bf16"


def test_unknown_cpu_flags_mean_fp32(cache, monkeypatch):
    monkeypatch.setattr(prec, "cpu_info", lambda: _cpu(set()))
    chosen = prec.resolve("auto", "cpu", PROBE)
    assert chosen.name == "fp32" and "unknown" in chosen.reason


def test_explicit_values_are_honoured_on_cpu(cache, monkeypatch):
    monkeypatch.setattr(prec, "cpu_info", lambda: _cpu({"avx2"}))
    assert prec.resolve("fp32", "cpu").name == "fp32"
    bf16 = prec.resolve("bf16", "cpu")  # emulated here: honoured, with a warning in the reason
    assert bf16.name == "bf16" and bf16.requested == "bf16" and "emulated" in bf16.reason
    with bf16.autocast():
        assert torch.get_autocast_dtype("cpu") is torch.bfloat16
        assert torch.is_autocast_enabled("cpu")


def test_fp16_on_a_cpu_is_refused_naming_the_setting(cache):
    with pytest.raises(ValueError, match="precision 'fp16' is refused on a CPU.*bf16, fp32"):
        prec.resolve("fp16", "cpu")


def test_a_bad_value_is_refused_naming_the_setting():
    with pytest.raises(ValueError, match=r"precision 'fp64' is not one of auto, fp32, bf16, fp16"):
        prec.resolve("fp64", "cpu")
    with pytest.raises(ValueError, match="--precision"):
        prec.check_choice("half")


@pytest.mark.parametrize("verb", ["pretrain", "finetune", "supervised", "predict", "embed"])
def test_every_network_verb_takes_precision(verb, capsys):
    base = {
        "pretrain": ["--store", "s", "--out", "o", "--summary", "j", "--stats", "t"],
        "finetune": ["--store", "s", "--out", "o", "--summary", "j", "--fraction", "1"]
        + ["--seed", "0", "--pretrained", "p"],
        "supervised": ["--store", "s", "--out", "o", "--summary", "j", "--fraction", "1"]
        + ["--seed", "0"],
        "predict": ["--model", "m", "--store", "s", "--out", "o"],
        "embed": ["--checkpoint", "c", "--store", "s", "--out", "o"],
    }[verb]
    parser = build_parser()
    assert parser.parse_args([verb, *base]).precision == "auto"
    assert parser.parse_args([verb, *base, "--precision", "bf16"]).precision == "bf16"
    with pytest.raises(SystemExit):
        parser.parse_args([verb, *base, "--precision", "fp64"])
    assert "--precision" in capsys.readouterr().err


def test_cuda_auto_prefers_bf16_then_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert prec.resolve("auto", "cuda").name == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    fp16 = prec.resolve("auto", "cuda")
    assert fp16.name == "fp16" and "loss scaling" in fp16.reason
    assert prec.resolve("fp32", "cuda").name == "fp32"
    with pytest.raises(ValueError, match="Test GPU does not support bf16"):
        prec.resolve("bf16", "cuda")


def test_other_devices_run_fp32_only():
    assert prec.resolve("auto", "meta").name == "fp32"
    with pytest.raises(ValueError, match="not supported on device 'meta'"):
        prec.resolve("bf16", "meta")


def test_the_timing_probe_runs_both_precisions():
    # (width 16: torch 2.14's fp32 channels_last backward aborts the process at widths 4 and 8)
    rates = prec.measure_cpu_step_rates(
        {"arch": "resnet_small", "width": 16}, batch=4, steps=1, warmup=1
    )
    assert rates["fp32_images_per_s"] > 0 and rates["bf16_images_per_s"] > 0
    assert rates["batch"] == 4


def test_an_unwritable_cache_still_decides(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SSL_PHOTOZ_CACHE_DIR", str(blocker / "sub"))  # cannot be a directory
    monkeypatch.setattr(prec, "cpu_info", lambda: _cpu({"avx512_bf16"}))
    _rates(monkeypatch, fp32=10.0, bf16=30.0)
    chosen = prec.resolve("auto", "cpu", PROBE)
    assert chosen.name == "bf16" and "not cached" in chosen.reason
