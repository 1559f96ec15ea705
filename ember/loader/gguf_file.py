"""Read a GGUF file into plain metadata and raw, memory-mapped tensor bytes.

Tensor data stays in its on-disk (quantized) form. The file is memory-mapped; callers copy what
they keep (see layers/), then drop the GGUFFile so the mapping is released.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ember.errors import ModelFileError
from ember.loader.gguf_header import map_gguf_file, parse_gguf_header, tensor_view


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor as stored in the file.

    `shape` is in torch order (rows first: the reverse of GGUF's ne order). `data` is a
    read-only uint8 view of the file's bytes shaped `shape[:-1] + (row_bytes,)` for every type,
    F32/F16/BF16 included: consumers view or dequantize it (e.g. `data.view(np.float16)`).
    """

    name: str
    qtype: str  # GGML type name: "F32", "Q4_K", ...
    shape: tuple[int, ...]
    data: np.ndarray  # uint8, shape[:-1] + (bytes per row,), backed by the file mapping
    offset: int = -1
    """Absolute file offset of the first byte (-1 when not known)."""


@dataclass
class GGUFFile:
    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_value(self, key: str, default: Any = None) -> Any:
        """Value of `<architecture>.<key>` (e.g. "block_count"), or `default`."""
        return self.metadata.get(f"{self.architecture}.{key}", default)


def read_gguf(path: str | Path, *, with_tensors: bool = True) -> GGUFFile:
    """Parse and validate the whole header; map tensor data without reading it.

    Raises ModelFileError with a one-line reason for anything malformed or unsupported.
    With `with_tensors=False` tensor infos are still validated but `tensors` is left empty.
    """
    path = Path(path)
    mapping = map_gguf_file(path)
    header = parse_gguf_header(mapping, path.name)
    tensors: dict[str, GGUFTensor] = {}
    if with_tensors:
        for info in header.tensors:
            data = tensor_view(mapping, info)
            tensors[info.name] = GGUFTensor(info.name, info.qtype, info.shape, data, info.offset)
    return GGUFFile(path=path, metadata=header.metadata, tensors=tensors)


def read_gguf_with_gguf_reader(path: str | Path, *, with_tensors: bool = True) -> GGUFFile:
    """The same result built with gguf.GGUFReader: slow on big vocabularies; tests use it as oracle.

    Only files that `read_gguf` accepts should be given to it: GGUFReader trusts the header.
    """
    from gguf import GGUFReader

    path = Path(path)
    try:
        reader = GGUFReader(path, "r")
    except Exception as exc:  # the gguf package raises assorted errors on corrupt files
        raise ModelFileError(f"{path.name}: not a readable GGUF file ({exc})") from None
    metadata = {
        key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")
    }
    tensors: dict[str, GGUFTensor] = {}
    if with_tensors:
        for t in reader.tensors:
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            raw = t.data.reshape(-1).view(np.uint8)
            row_bytes = raw.size // (t.n_elements // shape[-1])
            data = raw.reshape(*shape[:-1], row_bytes)
            tensors[t.name] = GGUFTensor(t.name, t.tensor_type.name, shape, data)
    return GGUFFile(path=path, metadata=metadata, tensors=tensors)
