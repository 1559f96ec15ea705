"""Load a model (weights + config + tokenizer) from a GGUF file or a Hugging Face directory."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ember.config import ModelConfig
from ember.errors import ModelFileError
from ember.loader.weights import WeightStore, store_from_gguf, store_from_safetensors
from ember.models import architecture_for_gguf, architecture_for_hf
from ember.models.base import DecoderLM

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: DecoderLM
    config: ModelConfig
    tokenizer: Any  # ember.tokenizer.base.Tokenizer
    name: str


def _build(arch: Any, config: ModelConfig, store: WeightStore) -> DecoderLM:
    model = DecoderLM(config, store, arch.make_block, arch.NORM_OFFSET[store.file_format])
    unused = store.remaining()
    if unused:
        # Extra tensors are harmless for generation, but worth knowing about.
        logger.warning("%s: %d unused tensors (first: %s)", store.source, len(unused), unused[0])
    return model


def load_gguf(path: Path, *, with_tokenizer: bool = True) -> LoadedModel:
    from ember.loader.gguf_file import read_gguf

    gguf_file = read_gguf(path)
    arch = architecture_for_gguf(gguf_file.architecture)
    embedding = gguf_file.tensors.get("token_embd.weight")
    if embedding is None:
        raise ModelFileError(f"{path.name}: missing tensor 'token_embd.weight'")
    config = arch.config_from_gguf(gguf_file.metadata, embedding.shape[0])
    tokenizer = None
    if with_tokenizer:
        from ember.tokenizer.gguf_tokenizer import tokenizer_from_gguf_metadata

        tokenizer = tokenizer_from_gguf_metadata(gguf_file.metadata)
    store = store_from_gguf(gguf_file)
    del gguf_file  # releases the file mapping; the store holds copies
    return LoadedModel(_build(arch, config, store), config, tokenizer, path.name)


def read_hf_config(directory: Path) -> dict[str, Any]:
    config_path = directory / "config.json"
    try:
        cfg = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise ModelFileError(f"{directory}: no config.json") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{config_path}: not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise ModelFileError(f"{config_path}: expected a JSON object")
    return cfg


def load_hf_directory(directory: Path, *, with_tokenizer: bool = True) -> LoadedModel:
    cfg = read_hf_config(directory)
    arch = architecture_for_hf(str(cfg.get("model_type", "")))
    config = arch.config_from_hf(cfg)
    store = store_from_safetensors(directory, arch.rename)
    tokenizer = None
    if with_tokenizer:
        from ember.tokenizer.hf_tokenizer import tokenizer_from_hf_directory

        tokenizer = tokenizer_from_hf_directory(directory)
    return LoadedModel(_build(arch, config, store), config, tokenizer, directory.name)


def load_model_path(path: Path, *, with_tokenizer: bool = True) -> LoadedModel:
    if path.is_dir():
        return load_hf_directory(path, with_tokenizer=with_tokenizer)
    if path.is_file():
        return load_gguf(path, with_tokenizer=with_tokenizer)
    raise ModelFileError(f"{path}: no such file or directory")
