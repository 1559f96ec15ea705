"""When the native kernels cannot be built or loaded, Ember warns once and keeps running."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ember import kernels
from ember.kernels import _build
from ember.kernels._build import KernelBuildError
from ember.quant import float_types, legacy


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_build_failure_warns_once_and_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    def failing_build() -> None:
        raise KernelBuildError("this CPU lacks avx512_bf16")

    with caplog.at_level(logging.INFO, logger="ember.kernels"):
        assert kernels.try_load(failing_build) is False
    (message,) = warnings_of(caplog)
    assert "\n" not in message
    assert "lacks avx512_bf16" in message and "reference path" in message


def test_unexpected_load_error_is_still_one_line(caplog: pytest.LogCaptureFixture) -> None:
    def broken_library() -> None:
        raise OSError("undefined symbol: _ZN3c10\nsecond line of the loader's report")

    with caplog.at_level(logging.INFO, logger="ember.kernels"):
        assert kernels.try_load(broken_library) is False
    (message,) = warnings_of(caplog)
    assert "\n" not in message and "OSError: undefined symbol" in message


def test_env_var_forces_the_reference_path_quietly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("EMBER_NO_KERNELS", "1")

    def must_not_load() -> bool:
        raise AssertionError("the library was loaded despite EMBER_NO_KERNELS")

    monkeypatch.setattr(kernels, "_library_loaded", must_not_load)
    with caplog.at_level(logging.INFO, logger="ember.kernels"):
        assert kernels.fast_methods_available() is False
        assert kernels.fast_method("Q4_K") is None
    assert warnings_of(caplog) == []


def test_methods_stay_reference_when_kernels_are_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kernels, "_library_loaded", lambda: False)
    for method in [*float_types.METHODS, *legacy.METHODS]:
        assert kernels.accelerated(method) is method
    assert kernels.fast_method("Q4_0") is None


def test_cpu_without_the_needed_features_is_a_build_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_build, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    with pytest.raises(KernelBuildError, match="lacks avx512f"):
        _build.load_library()


def test_compile_error_is_reported_with_a_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sources = tmp_path / "csrc"
    sources.mkdir()
    for name in (*_build.SOURCES, *_build.HEADERS):
        (sources / name).write_text('#error "deliberately broken"\n')
    monkeypatch.setattr(_build, "SOURCE_DIR", sources)
    monkeypatch.setattr(_build, "cpu_flags", lambda: frozenset(_build.REQUIRED_CPU_FLAGS))
    monkeypatch.setattr(_build.platform, "system", lambda: "Linux")
    monkeypatch.setattr(_build.platform, "machine", lambda: "x86_64")
    monkeypatch.setenv("EMBER_HOME", str(tmp_path / "home"))
    with pytest.raises(KernelBuildError, match="compiling them failed") as failure:
        _build.load_library()
    log = Path(str(failure.value).split("details in ")[1].rstrip(")"))
    assert log.is_file() and "deliberately broken" in log.read_text()
