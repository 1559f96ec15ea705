"""Turn whatever the user typed as a model into a file or folder on disk.

Accepted, in this order: `hf:owner/repo[:file.gguf]`, a library alias (`name` or `name:tag`,
any case), a local .gguf file, a local Hugging Face folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ember.errors import RegistryError
from ember.registry.cache import is_complete, read_manifest
from ember.registry.hub import fetch_from_hub, parse_hub_spec
from ember.registry.library import find_entry
from ember.registry.pull import pull_entry

ModelKind = Literal["gguf", "hf_dir"]

SAFETENSORS_INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class ModelSource:
    kind: ModelKind
    path: Path  # the .gguf file, or the Hugging Face folder
    name: str  # what to call the model in messages and listings


def resolve_model(spec: str, *, pull_if_missing: bool = True) -> ModelSource:
    """Find the model `spec` names; with pull_if_missing=False, never touch the network."""
    spec = spec.strip()
    if not spec:
        raise RegistryError("no model given; try `ember list --available`")
    if spec.startswith("hf:"):
        return _from_hub(spec, pull_if_missing)

    entry = find_entry(spec)
    if entry is not None:
        manifest = read_manifest(entry.name)
        if manifest is not None and is_complete(manifest):
            return ModelSource("gguf", manifest.path(), entry.name)
        if not pull_if_missing:
            raise RegistryError(
                f"model {entry.name!r} is not pulled; run `ember pull {entry.name}`"
            )
        return ModelSource("gguf", pull_entry(entry), entry.name)

    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise RegistryError(f"{spec} is not a .gguf file; give a .gguf file or a model folder")
        return ModelSource("gguf", path.resolve(), path.name)
    if path.is_dir():
        check_hf_dir(path)
        return ModelSource("hf_dir", path.resolve(), path.resolve().name)
    is_gguf_name = spec.lower().endswith(".gguf")
    if "/" in spec or "\\" in spec or is_gguf_name:
        looks_like_repo = spec.count("/") == 1 and not is_gguf_name and not spec.startswith(".")
        hint = f" (for a Hugging Face repo write hf:{spec})" if looks_like_repo else ""
        raise RegistryError(f"no such model file or folder: {spec}{hint}")
    raise RegistryError(
        f"unknown model {spec!r}; try `ember list --available`, "
        "a path to a .gguf file or Hugging Face folder, or hf:owner/repo"
    )


def check_hf_dir(folder: Path) -> None:
    """Raise RegistryError naming every piece a Hugging Face model folder lacks."""
    missing = [name for name in ("config.json", "tokenizer.json") if not (folder / name).is_file()]
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, AttributeError):
            raise RegistryError(f"{index} is not a valid safetensors index") from None
        missing.extend(shard for shard in shards if not (folder / shard).is_file())
    elif not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors weights")
    if missing:
        raise RegistryError(
            f"{folder} is not a complete Hugging Face model folder: missing {', '.join(missing)}"
        )


def _from_hub(spec: str, allow_network: bool) -> ModelSource:
    hub_spec = parse_hub_spec(spec)
    path = fetch_from_hub(hub_spec, allow_network=allow_network)
    if path.is_dir():
        check_hf_dir(path)
        return ModelSource("hf_dir", path, hub_spec.display)
    name = hub_spec.display if hub_spec.file else f"{hub_spec.display}:{path.name}"
    return ModelSource("gguf", path, name)
