"""Precision follows the hardware: train.bf16=auto resolves to bf16 only where the device runs it natively."""

import contextlib

import pytest
import torch

from sidrec import precision
from sidrec.config import load_config
from sidrec.errors import SidrecError


@pytest.fixture(autouse=True)
def _fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("SIDREC_CACHE", str(tmp_path))
    precision._reset_for_tests()
    yield
    precision._reset_for_tests()


def _mock_cpu(monkeypatch, native: bool, ratio: float) -> list[str]:
    calls: list[str] = []
    monkeypatch.setattr(precision, "native_cpu_bf16_flags", lambda: {"avx512_bf16": native, "amx": False})

    def fake_gflops(dtype, n=512, device="cpu", min_s=0.15):
        calls.append(str(dtype))
        return 100.0 * (ratio if dtype == torch.bfloat16 else 1.0)

    monkeypatch.setattr(precision, "matmul_gflops", fake_gflops)
    return calls


def test_auto_is_fp32_without_native_bf16(monkeypatch):
    calls = _mock_cpu(monkeypatch, native=False, ratio=0.02)
    assert precision.use_bf16("auto") is False
    assert isinstance(precision.autocast("auto"), contextlib.nullcontext)
    assert calls == []  # no native support: no need to time anything


def test_auto_is_bf16_with_native_bf16_confirmed_by_timing(monkeypatch):
    calls = _mock_cpu(monkeypatch, native=True, ratio=4.0)
    assert precision.use_bf16("auto") is True
    assert isinstance(precision.autocast("auto"), torch.autocast)
    assert len(calls) == 2


def test_auto_is_fp32_when_native_bf16_measures_slower(monkeypatch):
    _mock_cpu(monkeypatch, native=True, ratio=0.8)
    assert precision.use_bf16("auto") is False


def test_timing_is_cached_per_machine(monkeypatch, tmp_path):
    calls = _mock_cpu(monkeypatch, native=True, ratio=3.0)
    precision.use_bf16("auto")
    precision._reset_for_tests()
    assert precision.use_bf16("auto") is True
    assert len(calls) == 2  # the second resolution read the cached ratio from disk
    assert (tmp_path / "precision.json").exists()


def test_forced_bf16_on_a_cpu_without_it_warns_once_with_the_ratio(monkeypatch, capsys):
    _mock_cpu(monkeypatch, native=False, ratio=0.05)
    assert precision.use_bf16("true") is True
    precision.use_bf16(True)
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "0.05x" in err


def test_false_is_fp32_everywhere(monkeypatch):
    _mock_cpu(monkeypatch, native=True, ratio=4.0)
    assert precision.use_bf16("false") is False and precision.use_bf16(False) is False


def test_config_default_is_auto_and_booleans_are_accepted():
    assert load_config(None, []).train.bf16 == "auto"
    assert load_config(None, ["train.bf16=false"]).train.bf16 == "false"
    assert load_config(None, ["train.bf16=auto"]).train.bf16 == "auto"
    with pytest.raises(SidrecError, match="train.bf16"):
        load_config(None, ["train.bf16=maybe"])
