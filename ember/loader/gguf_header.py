"""Bounds-checked parser for GGUF v2/v3 headers (little-endian only).

Every count, length and offset read from the file is checked against the bytes that remain
before anything is allocated or looped over because of it, so a corrupt or hostile file fails
with a one-line ModelFileError instead of a huge allocation or a crash deep inside numpy.
Arrays of numbers decode with one `np.frombuffer` call and arrays of strings with one tight
loop, so a 262k-token vocabulary parses in a fraction of a second.

Layout (all integers little-endian):
    magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
    kv_count x (string key | u32 value type | value)
    tensor_count x (string name | u32 n_dims | n_dims x u64 ne | u32 ggml type | u64 offset)
    padding to `general.alignment` | tensor data (offsets are relative to this point)
A string is a u64 byte length followed by UTF-8 bytes; an array is a u32 element type, a u64
count, then the elements back to back.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import (
    GGML_QUANT_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGMLQuantizationType,
    GGUFValueType,
    Keys,
)

from ember.errors import ModelFileError

SUPPORTED_VERSIONS = (2, 3)
GGML_MAX_DIMS = 4
# ggml stores tensor names in a 64-byte field that ends with a NUL, as llama.cpp enforces.
MAX_TENSOR_NAME_BYTES = 63
# The GGUF spec allows arrays of arrays; nobody needs deep ones, and recursion must stay bounded.
MAX_ARRAY_DEPTH = 3
_INT64_MAX = 2**63 - 1

_FIXED_HEADER_BYTES = 24  # magic, version, tensor_count, kv_count
# Smallest possible encodings, used to bound counts by the bytes left before looping over them.
_MIN_KV_BYTES = 8 + 4 + 1  # empty key, value type, one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # empty name, n_dims, one dim, type, offset
_MIN_STRING_BYTES = 8
_MIN_ARRAY_BYTES = 4 + 8

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

# value type -> (struct format for one scalar, numpy dtype for an array of them)
_NUMERIC_TYPES: dict[int, tuple[struct.Struct, np.dtype[Any]]] = {
    GGUFValueType.UINT8: (struct.Struct("<B"), np.dtype("<u1")),
    GGUFValueType.INT8: (struct.Struct("<b"), np.dtype("<i1")),
    GGUFValueType.UINT16: (struct.Struct("<H"), np.dtype("<u2")),
    GGUFValueType.INT16: (struct.Struct("<h"), np.dtype("<i2")),
    GGUFValueType.UINT32: (struct.Struct("<I"), np.dtype("<u4")),
    GGUFValueType.INT32: (struct.Struct("<i"), np.dtype("<i4")),
    GGUFValueType.FLOAT32: (struct.Struct("<f"), np.dtype("<f4")),
    GGUFValueType.UINT64: (struct.Struct("<Q"), np.dtype("<u8")),
    GGUFValueType.INT64: (struct.Struct("<q"), np.dtype("<i8")),
    GGUFValueType.FLOAT64: (struct.Struct("<d"), np.dtype("<f8")),
    # Booleans are one byte; any non-zero byte reads as True.
    GGUFValueType.BOOL: (struct.Struct("<B"), np.dtype("<u1")),
}


@dataclass(frozen=True)
class GGUFTensorInfo:
    """Where one tensor lives: `shape` in torch order (rows first), `offset` absolute in file."""

    name: str
    qtype: str  # GGML type name: "F32", "Q4_K", ...
    shape: tuple[int, ...]
    offset: int
    row_bytes: int  # bytes of one row of shape[-1] elements, a whole number of blocks
    nbytes: int

    @property
    def byte_shape(self) -> tuple[int, ...]:
        """Shape of the raw uint8 view: every dim but the last, then the bytes of one row."""
        return (*self.shape[:-1], self.row_bytes)


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    alignment: int
    data_offset: int  # absolute file offset that tensor offsets are relative to
    metadata: dict[str, Any]  # plain Python values: str, int, float, bool, (nested) lists
    tensors: list[GGUFTensorInfo]  # in file order


def map_gguf_file(path: Path) -> np.memmap:
    """Memory-map `path` read-only as uint8, turning filesystem problems into ModelFileError."""
    try:
        if path.is_dir():
            raise ModelFileError(f"{path}: is a directory, not a GGUF file")
        if not path.exists():
            raise ModelFileError(f"{path}: no such file")
        if path.stat().st_size == 0:
            raise ModelFileError(f"{path}: file is empty, not a GGUF file")
        return np.memmap(path, dtype=np.uint8, mode="r")
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read the file ({exc.strerror or exc})") from None


def tensor_view(buffer: np.ndarray, info: GGUFTensorInfo) -> np.ndarray:
    """Raw bytes of one tensor, shaped `info.byte_shape`, without copying."""
    return buffer[info.offset : info.offset + info.nbytes].reshape(info.byte_shape)


def parse_gguf_header(
    buffer: bytes | bytearray | memoryview | np.ndarray, source: str
) -> GGUFHeader:
    """Parse and validate the header of a whole GGUF file held in `buffer`.

    `source` names the file in error messages. Tensor data is only range-checked, never read.
    Raises ModelFileError with a one-line reason for anything malformed or unsupported.
    """
    view = buffer.data if isinstance(buffer, np.ndarray) else memoryview(buffer)
    if view.ndim != 1 or view.format != "B":
        raise ValueError("parse_gguf_header needs a flat uint8 buffer")
    return _Parser(view, source).parse()


class _Parser:
    def __init__(self, view: memoryview, source: str) -> None:
        self.view = view
        self.source = source
        self.end = len(view)
        self.pos = 0

    def fail(self, message: str) -> ModelFileError:
        return ModelFileError(f"{self.source}: {message}")

    def need(self, nbytes: int, what: str) -> None:
        remaining = self.end - self.pos
        if nbytes > remaining:
            raise self.fail(
                f"truncated or corrupt file: {what} needs {nbytes} bytes at offset {self.pos} "
                f"but only {remaining} remain"
            )

    def u32(self, what: str) -> int:
        self.need(4, what)
        (value,) = _U32.unpack_from(self.view, self.pos)
        self.pos += 4
        return int(value)

    def u64(self, what: str) -> int:
        self.need(8, what)
        (value,) = _U64.unpack_from(self.view, self.pos)
        self.pos += 8
        return int(value)

    def string(self, what: str) -> str:
        length = self.u64(f"length of {what}")
        self.need(length, what)
        start = self.pos
        self.pos += length
        try:
            return str(self.view[start : self.pos], "utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8 (at offset {start})") from None

    # -- top level -------------------------------------------------------------------------

    def parse(self) -> GGUFHeader:
        version, tensor_count, kv_count = self.parse_fixed_header()
        metadata, alignment = self.parse_metadata(kv_count)
        self.check_count_fits(tensor_count, _MIN_TENSOR_INFO_BYTES, "tensor infos")
        infos = [self.parse_tensor_info(index, alignment) for index in range(tensor_count)]
        header_end = self.pos
        data_offset = -(-header_end // alignment) * alignment
        tensors = self.place_tensors(infos, data_offset)
        return GGUFHeader(version, alignment, data_offset, metadata, tensors)

    def parse_fixed_header(self) -> tuple[int, int, int]:
        if self.end < 4 or _U32.unpack_from(self.view, 0)[0] != GGUF_MAGIC:
            first = bytes(self.view[:4])
            if self.end < 4 and b"GGUF".startswith(first):
                raise self.fail(f"truncated file: only {self.end} bytes, no complete GGUF header")
            raise self.fail(f"not a GGUF file (starts with {first!r}, expected b'GGUF')")
        self.pos = 4
        version = self.u32("GGUF version")
        if version not in SUPPORTED_VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            if swapped in SUPPORTED_VERSIONS:
                raise self.fail(
                    f"big-endian GGUF (version {swapped}) is not supported; "
                    "use a little-endian conversion of the model"
                )
            raise self.fail(f"unsupported GGUF version {version} (Ember reads versions 2 and 3)")
        self.need(_FIXED_HEADER_BYTES - self.pos, "GGUF header counts")
        tensor_count = self.u64("tensor count")
        kv_count = self.u64("metadata key count")
        # Both tables must fit in the file, whatever their entries turn out to be.
        min_tables = kv_count * _MIN_KV_BYTES + tensor_count * _MIN_TENSOR_INFO_BYTES
        if min_tables > self.end - self.pos:
            raise self.fail(
                f"corrupt or truncated header: it claims {kv_count} metadata keys and "
                f"{tensor_count} tensors, more than the remaining {self.end - self.pos} bytes "
                "can hold"
            )
        return version, tensor_count, kv_count

    def check_count_fits(self, count: int, min_bytes_each: int, what: str) -> None:
        if count * min_bytes_each > self.end - self.pos:
            raise self.fail(
                f"truncated or corrupt file: {count} {what} cannot fit in the remaining "
                f"{self.end - self.pos} bytes"
            )

    # -- metadata --------------------------------------------------------------------------

    def parse_metadata(self, kv_count: int) -> tuple[dict[str, Any], int]:
        metadata: dict[str, Any] = {}
        alignment = GGUF_DEFAULT_ALIGNMENT
        for index in range(kv_count):
            key = self.string(f"name of metadata key #{index}")
            if key in metadata:
                raise self.fail(f"duplicate metadata key {key!r}")
            value_type = self.u32(f"type of metadata key {key!r}")
            metadata[key] = self.value(value_type, key, depth=0)
            if key == Keys.General.ALIGNMENT:
                alignment = self.check_alignment(value_type, metadata[key])
        return metadata, alignment

    def check_alignment(self, value_type: int, value: Any) -> int:
        if value_type != GGUFValueType.UINT32:
            raise self.fail(
                f"{Keys.General.ALIGNMENT} must be a uint32, not value type {value_type}"
            )
        if value == 0 or value & (value - 1):
            raise self.fail(f"{Keys.General.ALIGNMENT} is {value}, not a power of two")
        return int(value)

    def value(self, value_type: int, key: str, depth: int) -> Any:
        numeric = _NUMERIC_TYPES.get(value_type)
        if numeric is not None:
            scalar, _ = numeric
            self.need(scalar.size, f"value of metadata key {key!r}")
            (value,) = scalar.unpack_from(self.view, self.pos)
            self.pos += scalar.size
            return bool(value) if value_type == GGUFValueType.BOOL else value
        if value_type == GGUFValueType.STRING:
            return self.string(f"string value of metadata key {key!r}")
        if value_type == GGUFValueType.ARRAY:
            return self.array(key, depth + 1)
        raise self.fail(f"metadata key {key!r} has unknown value type {value_type}")

    def array(self, key: str, depth: int) -> list[Any]:
        if depth > MAX_ARRAY_DEPTH:
            raise self.fail(f"metadata key {key!r} nests arrays deeper than {MAX_ARRAY_DEPTH}")
        item_type = self.u32(f"element type of array {key!r}")
        count = self.u64(f"length of array {key!r}")
        numeric = _NUMERIC_TYPES.get(item_type)
        if numeric is not None:
            _, dtype = numeric
            nbytes = count * dtype.itemsize
            self.need(nbytes, f"array {key!r} of {count} elements")
            items = np.frombuffer(self.view, dtype=dtype, count=count, offset=self.pos)
            self.pos += nbytes
            if item_type == GGUFValueType.BOOL:
                return (items != 0).tolist()
            return items.tolist()
        if item_type == GGUFValueType.STRING:
            self.need(count * _MIN_STRING_BYTES, f"array {key!r} of {count} strings")
            return self.string_array(key, count)
        if item_type == GGUFValueType.ARRAY:
            self.need(count * _MIN_ARRAY_BYTES, f"array {key!r} of {count} arrays")
            return [self.array(key, depth + 1) for _ in range(count)]
        raise self.fail(f"array {key!r} has unknown element type {item_type}")

    def string_array(self, key: str, count: int) -> list[str]:
        # The hot loop for vocabularies (262k entries for Gemma): locals only, no method calls.
        view, end, pos = self.view, self.end, self.pos
        unpack_length = _U64.unpack_from
        items: list[str] = []
        append = items.append
        for index in range(count):
            if end - pos < 8:
                self.pos = pos
                self.need(8, f"length of element {index} of array {key!r}")
            (length,) = unpack_length(view, pos)
            pos += 8
            if length > end - pos:
                self.pos = pos
                self.need(length, f"element {index} of array {key!r}")
            try:
                append(str(view[pos : pos + length], "utf-8"))
            except UnicodeDecodeError:
                raise self.fail(
                    f"element {index} of array {key!r} is not valid UTF-8 (at offset {pos})"
                ) from None
            pos += length
        self.pos = pos
        return items

    # -- tensors ---------------------------------------------------------------------------

    def parse_tensor_info(self, index: int, alignment: int) -> GGUFTensorInfo:
        name_start = self.pos
        name = self.string(f"name of tensor #{index}")
        name_bytes = self.pos - name_start - 8
        if name_bytes > MAX_TENSOR_NAME_BYTES:
            raise self.fail(
                f"tensor #{index} name is {name_bytes} bytes, "
                f"longer than ggml's limit of {MAX_TENSOR_NAME_BYTES}"
            )
        n_dims = self.u32(f"dimension count of tensor {name!r}")
        if not 1 <= n_dims <= GGML_MAX_DIMS:
            raise self.fail(
                f"tensor {name!r} has {n_dims} dimensions (must be 1 to {GGML_MAX_DIMS})"
            )
        ne = [self.u64(f"dimension {axis} of tensor {name!r}") for axis in range(n_dims)]
        n_elements = 1
        for size in ne:
            if not 0 < size <= _INT64_MAX:
                raise self.fail(f"tensor {name!r} has invalid dimension {size} in {ne}")
            n_elements *= size
        if n_elements > _INT64_MAX:
            raise self.fail(f"tensor {name!r} has too many elements ({ne} overflows int64)")
        type_id = self.u32(f"type of tensor {name!r}")
        relative_offset = self.u64(f"data offset of tensor {name!r}")
        qtype = _known_quant_type(type_id)
        if qtype is None:
            raise self.fail(f"tensor {name!r} has unsupported tensor type {type_id}")
        block_size, block_bytes = GGML_QUANT_SIZES[qtype]
        if ne[0] % block_size:
            raise self.fail(
                f"tensor {name!r} rows of {ne[0]} elements are not a multiple of "
                f"{qtype.name}'s block size {block_size}"
            )
        if relative_offset % alignment:
            raise self.fail(
                f"tensor {name!r} data offset {relative_offset} is not aligned to {alignment} bytes"
            )
        row_bytes = ne[0] // block_size * block_bytes
        nbytes = n_elements // ne[0] * row_bytes
        # GGUF lists ne fastest-varying first; torch order is the reverse.
        shape = tuple(reversed(ne))
        # `offset` stays relative until place_tensors knows where the data section starts.
        return GGUFTensorInfo(name, qtype.name, shape, relative_offset, row_bytes, nbytes)

    def place_tensors(self, infos: list[GGUFTensorInfo], data_offset: int) -> list[GGUFTensorInfo]:
        if infos and data_offset > self.end:
            raise self.fail(
                f"truncated file: tensor data should start at offset {data_offset} "
                f"but the file has {self.end} bytes"
            )
        placed: list[GGUFTensorInfo] = []
        seen: set[str] = set()
        for info in infos:
            if info.name in seen:
                raise self.fail(f"duplicate tensor name {info.name!r}")
            seen.add(info.name)
            start = data_offset + info.offset
            if start + info.nbytes > self.end:
                raise self.fail(
                    f"truncated or corrupt file: tensor {info.name!r} data (offset {start}, "
                    f"{info.nbytes} bytes) runs past the end of the file ({self.end} bytes)"
                )
            placed.append(
                GGUFTensorInfo(
                    info.name, info.qtype, info.shape, start, info.row_bytes, info.nbytes
                )
            )
        by_offset = sorted(placed, key=lambda t: t.offset)
        for before, after in zip(by_offset, by_offset[1:], strict=False):
            if after.offset < before.offset + before.nbytes:
                raise self.fail(f"tensors {before.name!r} and {after.name!r} overlap in the file")
        return placed


def _known_quant_type(type_id: int) -> GGMLQuantizationType | None:
    try:
        qtype = GGMLQuantizationType(type_id)
    except ValueError:
        return None
    return qtype if qtype in GGML_QUANT_SIZES else None
