"""Models from the Hugging Face hub: `hf:owner/repo` (safetensors) or `hf:owner/repo:file.gguf`.

The local Hugging Face cache is tried first, without any network. Before a download one quick
metadata request checks that the hub answers at all: huggingface_hub's downloader retries a
dead connection for half a minute, and an offline machine should fail in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ember.errors import RegistryError

_PROBE_TIMEOUT_S = 5.0
_ETAG_TIMEOUT_S = 10.0
# Enough to run a safetensors model; skips pickles, ONNX, GGUF and other formats.
SNAPSHOT_PATTERNS = ("*.json", "*.safetensors", "*.jinja", "tokenizer.model")


@dataclass(frozen=True)
class HubSpec:
    repo_id: str
    file: str | None  # a .gguf file inside the repo; None for a safetensors snapshot

    @property
    def display(self) -> str:
        return f"hf:{self.repo_id}" + (f":{self.file}" if self.file else "")


def parse_hub_spec(spec: str) -> HubSpec:
    """`hf:owner/repo` or `hf:owner/repo:file.gguf` -> HubSpec."""
    body = spec[len("hf:") :] if spec.startswith("hf:") else spec
    repo_id, _, file = body.partition(":")
    owner, slash, repo = repo_id.partition("/")
    if not (owner and slash and repo) or "/" in repo:
        raise RegistryError(
            f"bad Hugging Face model {spec!r}; write hf:owner/repo or hf:owner/repo:file.gguf"
        )
    if file and not file.endswith(".gguf"):
        raise RegistryError(
            f"{spec!r}: only a .gguf file can be named; use hf:{repo_id} for a safetensors repo"
        )
    return HubSpec(repo_id, file or None)


def fetch_from_hub(spec: HubSpec, *, allow_network: bool = True) -> Path:
    """Path of the .gguf file or the snapshot folder, downloading it if needed and allowed."""
    cached = _from_cache(spec)
    if cached is not None:
        return cached
    if not allow_network:
        raise RegistryError(f"{spec.display} is not in the local Hugging Face cache")
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise RegistryError(
            f"{spec.display} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
        )
    siblings = _probe(spec)
    if spec.file is not None:
        if spec.file not in siblings:
            raise RegistryError(f"hf:{spec.repo_id} has no file {spec.file!r}")
        return _download(spec)
    if not any(name.endswith(".safetensors") for name in siblings):
        ggufs = sorted(name for name in siblings if name.endswith(".gguf"))
        if len(ggufs) != 1:
            choices = ", ".join(f"hf:{spec.repo_id}:{name}" for name in ggufs[:5])
            hint = f"; pick a .gguf file: {choices}" if ggufs else ""
            raise RegistryError(f"hf:{spec.repo_id} has no .safetensors weights{hint}")
        return _download(HubSpec(spec.repo_id, ggufs[0]))
    return _download(spec)


def _from_cache(spec: HubSpec) -> Path | None:
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        if spec.file is not None:
            return Path(hf_hub_download(spec.repo_id, spec.file, local_files_only=True))
        folder = Path(
            snapshot_download(
                spec.repo_id, allow_patterns=list(SNAPSHOT_PATTERNS), local_files_only=True
            )
        )
    except Exception:  # any cache miss; the network path below reports real problems
        return None
    return folder if (folder / "config.json").is_file() else None


def _probe(spec: HubSpec) -> set[str]:
    """File names in the repo; RegistryError at once if the hub cannot be reached."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        info: Any = HfApi().model_info(spec.repo_id, timeout=_PROBE_TIMEOUT_S)
    except GatedRepoError:
        raise RegistryError(
            f"hf:{spec.repo_id} is gated; accept its terms on the hub and log in (`hf auth login`)"
        ) from None
    except RepositoryNotFoundError:
        raise RegistryError(
            f"the Hugging Face hub has no repository {spec.repo_id} (or it is private)"
        ) from None
    except HfHubHTTPError as exc:
        raise RegistryError(
            f"the Hugging Face hub refused {spec.repo_id}: {_first_line(exc)}"
        ) from None
    except Exception as exc:  # transport errors from whichever HTTP client the hub library uses
        raise RegistryError(
            f"cannot reach the Hugging Face hub to fetch {spec.repo_id}: {_first_line(exc)}"
        ) from None
    return {sibling.rfilename for sibling in (info.siblings or [])}


def _download(spec: HubSpec) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        if spec.file is not None:
            return Path(hf_hub_download(spec.repo_id, spec.file, etag_timeout=_ETAG_TIMEOUT_S))
        return Path(
            snapshot_download(
                spec.repo_id, allow_patterns=list(SNAPSHOT_PATTERNS), etag_timeout=_ETAG_TIMEOUT_S
            )
        )
    except Exception as exc:
        raise RegistryError(
            f"download of {spec.display} from the Hugging Face hub failed: {_first_line(exc)}"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
