"""`ember show`: a model's shape and contents, read from GGUF metadata or a config.json.

Values stay raw (ints, dicts, bools) so callers can format or compare them; the CLI
turns them into readable lines.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from ember.errors import ModelFileError
from ember.registry.resolve import ModelSource, resolve_model

# The most a safetensors header may claim before we call the file corrupt.
_MAX_SAFETENSORS_HEADER = 100 * 2**20


def show(spec: str) -> dict[str, Any]:
    """Facts about a local model: architecture, parameter count, tensor types, sizes, template."""
    source = resolve_model(spec, pull_if_missing=False)
    details = _gguf_details(source.path) if source.kind == "gguf" else _hf_details(source.path)
    return {"model": source.name, "path": str(source.path), "format": source.kind, **details}


def chat_template(spec: str) -> str | None:
    """The model's chat template text, or None when it has none."""
    source = resolve_model(spec, pull_if_missing=False)
    return _template_of(source)


def _template_of(source: ModelSource) -> str | None:
    if source.kind == "gguf":
        from ember.loader.gguf_file import read_gguf

        value = read_gguf(source.path, with_tensors=False).metadata.get("tokenizer.chat_template")
        return str(value) if value else None
    return _hf_chat_template(source.path)


def _gguf_details(path: Path) -> dict[str, Any]:
    from ember.loader.gguf_file import read_gguf

    gguf = read_gguf(path)
    metadata = gguf.metadata
    types = Counter(tensor.qtype for tensor in gguf.tensors.values())
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab = gguf.arch_value("vocab_size") or (len(tokens) if tokens is not None else None)
    return {
        "architecture": gguf.architecture,
        "parameters": sum(math.prod(tensor.shape) for tensor in gguf.tensors.values()),
        "tensor_types": dict(types.most_common()),
        "context_length": gguf.arch_value("context_length"),
        "embedding_length": gguf.arch_value("embedding_length"),
        "layers": gguf.arch_value("block_count"),
        "heads": gguf.arch_value("attention.head_count"),
        "kv_heads": gguf.arch_value("attention.head_count_kv"),
        "vocab_size": vocab or None,
        "chat_template": bool(metadata.get("tokenizer.chat_template")),
        "file_size": path.stat().st_size,
    }


def _hf_details(folder: Path) -> dict[str, Any]:
    config = _read_json(folder / "config.json")
    # Multimodal configs (gemma3, ...) keep the language model's shape under text_config.
    text_config = config.get("text_config")
    shape = {**config, **text_config} if isinstance(text_config, dict) else config
    architectures = config.get("architectures") or []
    types: Counter[str] = Counter()
    parameters = 0
    files = sorted(folder.glob("*.safetensors"))
    for weights in files:
        for tensor in _safetensors_header(weights).values():
            types[str(tensor["dtype"])] += 1
            parameters += math.prod(tensor["shape"])
    return {
        "architecture": config.get("model_type") or (architectures[0] if architectures else None),
        "parameters": parameters,
        "tensor_types": dict(types.most_common()),
        "context_length": shape.get("max_position_embeddings"),
        "embedding_length": shape.get("hidden_size"),
        "layers": shape.get("num_hidden_layers"),
        "heads": shape.get("num_attention_heads"),
        "kv_heads": shape.get("num_key_value_heads", shape.get("num_attention_heads")),
        "vocab_size": shape.get("vocab_size"),
        "chat_template": _hf_chat_template(folder) is not None,
        "file_size": sum(path.stat().st_size for path in folder.iterdir() if path.is_file()),
    }


def _hf_chat_template(folder: Path) -> str | None:
    """From chat_template.jinja, chat_template.json or tokenizer_config.json, in that order."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        template = _read_json(path).get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}]
            named = {item.get("name"): item.get("template") for item in template}
            template = named.get("default") or next(iter(named.values()), None)
        if isinstance(template, str) and template:
            return template
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: expected a JSON object")
    return data


def _safetensors_header(path: Path) -> dict[str, Any]:
    """Tensor entries ({name: {dtype, shape, data_offsets}}) without reading any weights."""
    try:
        with path.open("rb") as source:
            length = int.from_bytes(source.read(8), "little")
            if not 0 < length <= _MAX_SAFETENSORS_HEADER:
                raise ValueError(f"header length {length}")
            header = json.loads(source.read(length))
        return {
            name: entry
            for name, entry in header.items()
            if isinstance(entry, dict) and "dtype" in entry and "shape" in entry
        }
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelFileError(f"{path.name}: not a readable safetensors file ({exc})") from None
