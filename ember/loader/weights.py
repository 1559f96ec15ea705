"""Named raw weights, as stored in the model file, in llama.cpp's (GGUF) tensor names.

Every tensor is kept as bytes in its storage format: a uint8 tensor [rows, row_bytes] plus the
GGML type name that says how to read it. GGUF blocks stay quantized; safetensors weights keep
their dtype (F32/F16/BF16 bytes). Layers turn these into modules (see layers/).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ember.errors import ModelFileError
from ember.loader.gguf_file import GGUFFile

_TORCH_DTYPE_TO_GGML = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


@dataclass(frozen=True)
class RawTensor:
    """A weight in its storage format: `data` is uint8 [rows, row_bytes]; `shape` is logical."""

    name: str
    qtype: str
    shape: tuple[int, ...]
    data: torch.Tensor

    @property
    def rows(self) -> int:
        return math.prod(self.shape[:-1]) if len(self.shape) > 1 else 1

    @property
    def cols(self) -> int:
        return self.shape[-1]

    def to_float(self) -> torch.Tensor:
        """Dequantized float32 copy with the logical shape (for small tensors: norms, biases)."""
        from ember.quant.base import get_quant_method

        values = get_quant_method(self.qtype).dequantize(self.data, self.cols)
        return values.reshape(self.shape)


class WeightStore:
    """Raw weights by GGUF name; `take` hands a tensor over so the store does not keep it alive."""

    def __init__(self, tensors: dict[str, RawTensor], source: str, file_format: str) -> None:
        self._tensors = tensors
        self.source = source
        self.file_format = file_format
        """"gguf" or "safetensors": conventions differ (e.g. Gemma's norm offset is pre-added
        in GGUF files)."""

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def names(self) -> Iterator[str]:
        return iter(self._tensors)

    def peek(self, name: str) -> RawTensor:
        try:
            return self._tensors[name]
        except KeyError:
            raise ModelFileError(f"{self.source}: missing tensor {name!r}") from None

    def take(self, name: str) -> RawTensor:
        tensor = self.peek(name)
        del self._tensors[name]
        return tensor

    def take_optional(self, name: str) -> RawTensor | None:
        return self.take(name) if name in self._tensors else None

    def remaining(self) -> list[str]:
        return sorted(self._tensors)


def store_from_gguf(gguf_file: GGUFFile) -> WeightStore:
    """Copy every tensor out of the file mapping into process memory, still in its block form."""
    tensors: dict[str, RawTensor] = {}
    for name, info in gguf_file.tensors.items():
        rows = math.prod(info.shape[:-1]) if len(info.shape) > 1 else 1
        # np.array(copy=True) detaches from the memmap so the file mapping can be released.
        raw = np.array(info.data, copy=True).view(np.uint8).reshape(rows, -1)
        tensors[name] = RawTensor(name, info.qtype, info.shape, torch.from_numpy(raw))
    return WeightStore(tensors, gguf_file.path.name, "gguf")


def _dense_raw(name: str, tensor: torch.Tensor) -> RawTensor:
    qtype = _TORCH_DTYPE_TO_GGML.get(tensor.dtype)
    if qtype is None:
        raise ModelFileError(f"tensor {name!r} has unsupported dtype {tensor.dtype}")
    shape = tuple(tensor.shape)
    rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
    data = tensor.contiguous().view(torch.uint8).reshape(rows, -1)
    return RawTensor(name, qtype, shape, data)


def store_from_safetensors(directory: Path, rename: Callable[[str], str | None]) -> WeightStore:
    """Read every *.safetensors file of a Hugging Face directory, renaming to GGUF names.

    `rename` maps a Hugging Face tensor name to its GGUF name, or None to skip it.
    """
    from safetensors import safe_open

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelFileError(f"{directory}: no *.safetensors files")
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            listed = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelFileError(f"{index}: malformed index ({exc})") from None
        files = [f for f in files if f.name in listed]
    tensors: dict[str, RawTensor] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                for hf_name in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                    gguf_name = rename(hf_name)
                    if gguf_name is None:
                        continue
                    tensors[gguf_name] = _dense_raw(hf_name, handle.get_tensor(hf_name))
        except ModelFileError:
            raise
        except Exception as exc:
            raise ModelFileError(f"{file.name}: cannot read safetensors file ({exc})") from None
    return WeightStore(tensors, directory.name, "safetensors")
