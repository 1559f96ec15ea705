"""Named raw weights, as stored in the model file, in llama.cpp's (GGUF) tensor names.

Every tensor is kept as bytes in its storage format: a uint8 tensor [rows, row_bytes] plus the
GGML type name that says how to read it. GGUF blocks stay quantized; safetensors weights keep
their dtype (F32/F16/BF16 bytes). Layers take what they need from a WeightStore; a GGUF store
reads each tensor from the file straight into the buffer the layer keeps (no memory map in the
resident set, no second copy), so loading never holds much more than the model itself.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ember.errors import ModelFileError
from ember.loader.gguf_file import GGUFFile

_TORCH_DTYPE_TO_GGML = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


@dataclass(frozen=True)
class TensorInfo:
    """What a stored tensor is, without its bytes: `shape` is logical, rows first."""

    name: str
    qtype: str
    shape: tuple[int, ...]
    row_bytes: int

    @property
    def rows(self) -> int:
        return math.prod(self.shape[:-1]) if len(self.shape) > 1 else 1

    @property
    def cols(self) -> int:
        return self.shape[-1]


@dataclass(frozen=True)
class RawTensor:
    """A weight in its storage format: `data` is uint8 [rows, row_bytes]; `shape` is logical."""

    name: str
    qtype: str
    shape: tuple[int, ...]
    data: torch.Tensor

    @property
    def cols(self) -> int:
        return self.shape[-1]

    def to_float(self) -> torch.Tensor:
        """Dequantized float32 copy with the logical shape (for small tensors: norms, biases)."""
        from ember.quant.base import get_quant_method

        values = get_quant_method(self.qtype).dequantize(self.data, self.cols)
        return values.reshape(self.shape)


# Fills a uint8 [rows, row_bytes] buffer with a tensor's stored bytes.
ReadInto = Callable[[TensorInfo, torch.Tensor], None]


class WeightStore:
    """Raw weights by GGUF name. `take` reads a tensor into a new buffer and forgets it, so
    every byte is loaded once and held only by the layer that took it."""

    def __init__(
        self, infos: dict[str, TensorInfo], read_into: ReadInto, source: str, file_format: str
    ) -> None:
        self._infos = infos
        self._read_into = read_into
        self.source = source
        self.file_format = file_format
        """"gguf" or "safetensors": conventions differ (e.g. Gemma's norm offset is pre-added
        in GGUF files)."""

    def __contains__(self, name: str) -> bool:
        return name in self._infos

    def names(self) -> Iterator[str]:
        return iter(self._infos)

    def peek(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise ModelFileError(f"{self.source}: missing tensor {name!r}") from None

    def take(self, name: str) -> RawTensor:
        info = self.peek(name)
        data = torch.empty((info.rows, info.row_bytes), dtype=torch.uint8)
        self._read_into(info, data)
        del self._infos[name]
        return RawTensor(name, info.qtype, info.shape, data)

    def take_optional(self, name: str) -> RawTensor | None:
        return self.take(name) if name in self._infos else None

    def take_stacked(self, names: Sequence[str]) -> RawTensor:
        """2-D tensors of one type and width, their rows stacked into one buffer (read in place)."""
        infos = [self.peek(name) for name in names]
        first = infos[0]
        if any(i.qtype != first.qtype or i.shape[1:] != first.shape[1:] for i in infos):
            raise ValueError(f"cannot stack {list(names)}: types or widths differ")
        rows = sum(i.rows for i in infos)
        data = torch.empty((rows, first.row_bytes), dtype=torch.uint8)
        row = 0
        for info in infos:
            self._read_into(info, data[row : row + info.rows])
            row += info.rows
            del self._infos[info.name]
        return RawTensor("+".join(names), first.qtype, (rows, *first.shape[1:]), data)

    def remaining(self) -> list[str]:
        return sorted(self._infos)


def store_from_gguf(gguf_file: GGUFFile) -> WeightStore:
    """A store that reads tensors from the GGUF file with pread when layers take them."""
    infos: dict[str, TensorInfo] = {}
    offsets: dict[str, int] = {}
    for name, tensor in gguf_file.tensors.items():
        row_bytes = int(tensor.data.shape[-1]) if tensor.data.ndim else int(tensor.data.size)
        infos[name] = TensorInfo(name, tensor.qtype, tensor.shape, row_bytes)
        offsets[name] = tensor.offset
    path = gguf_file.path

    def read_into(info: TensorInfo, out: torch.Tensor) -> None:
        offset = offsets[info.name]
        if offset < 0:  # a GGUFFile built without offsets (e.g. by gguf.GGUFReader)
            source = gguf_file.tensors[info.name].data.reshape(info.rows, info.row_bytes)
            out.copy_(torch.from_numpy(source.copy()))
            return
        view = out.numpy().data.cast("B")
        with open(path, "rb", buffering=0) as handle:
            done = 0
            while done < len(view):
                count = os.preadv(handle.fileno(), [view[done:]], offset + done)
                if count <= 0:
                    raise ModelFileError(f"{path.name}: truncated while reading {info.name!r}")
                done += count

    return WeightStore(infos, read_into, path.name, "gguf")


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
                    tensors[gguf_name] = _dense_raw(gguf_name, handle.get_tensor(hf_name))
        except ModelFileError:
            raise
        except Exception as exc:
            raise ModelFileError(f"{file.name}: cannot read safetensors file ({exc})") from None
    infos = {
        name: TensorInfo(name, t.qtype, t.shape, int(t.data.shape[-1]))
        for name, t in tensors.items()
    }

    def read_into(info: TensorInfo, out: torch.Tensor) -> None:
        out.copy_(tensors.pop(info.name).data)

    return WeightStore(infos, read_into, directory.name, "safetensors")
