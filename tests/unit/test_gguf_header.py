"""GGUF header parser: writer round trips, clear errors for each kind of malformed file."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter

from ember.errors import ModelFileError
from ember.loader.gguf_file import read_gguf, read_gguf_with_gguf_reader
from ember.loader.gguf_header import parse_gguf_header
from ember.loader.gguf_validate import validate_gguf_header

# -- a tiny hand encoder, for files GGUFWriter refuses to make ------------------------------


def enc_str(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def enc_kv(key: str | bytes, value_type: int, payload: bytes) -> bytes:
    return enc_str(key) + struct.pack("<I", value_type) + payload


def enc_u32_kv(key: str, value: int) -> bytes:
    return enc_kv(key, GGUFValueType.UINT32, struct.pack("<I", value))


def enc_tensor(name: str | bytes, ne: list[int], type_id: int, offset: int) -> bytes:
    dims = b"".join(struct.pack("<Q", d) for d in ne)
    return enc_str(name) + struct.pack("<I", len(ne)) + dims + struct.pack("<IQ", type_id, offset)


def enc_file(
    kvs: list[bytes],
    tensors: list[bytes] | None = None,
    data: bytes = b"",
    *,
    version: int = 3,
    alignment: int = 32,
) -> bytes:
    tensors = tensors or []
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    head += b"".join(kvs) + b"".join(tensors)
    head += b"\0" * (-len(head) % alignment)
    return head + data


F32 = int(GGMLQuantizationType.F32)
Q8_0 = int(GGMLQuantizationType.Q8_0)


def parse_error(blob: bytes) -> str:
    with pytest.raises(ModelFileError) as info:
        parse_gguf_header(blob, "bad.gguf")
    message = str(info.value)
    assert message.startswith("bad.gguf: ") and "\n" not in message
    return message


# -- round trips through gguf.GGUFWriter ----------------------------------------------------


def write_sample(path: Path, *, alignment: int | None = None) -> dict[str, np.ndarray]:
    writer = GGUFWriter(path, "llama")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    writer.add_uint8("t.u8", 200)
    writer.add_int8("t.i8", -5)
    writer.add_uint16("t.u16", 60000)
    writer.add_int16("t.i16", -30000)
    writer.add_uint32("t.u32", 4_000_000_000)
    writer.add_int32("t.i32", -2_000_000_000)
    writer.add_float32("t.f32", 0.25)
    writer.add_uint64("t.u64", 2**64 - 1)
    writer.add_int64("t.i64", -(2**62))
    writer.add_float64("t.f64", 1e300)
    writer.add_bool("t.bool", True)
    writer.add_string("t.str", "héllo ✓")
    writer.add_array("t.strs", ["a", "", "ü", "<tok>"])
    writer.add_array("t.floats", [0.5, -1.5, 3.0])
    writer.add_key_value("t.u8s", [1, 2, 255], GGUFValueType.ARRAY, GGUFValueType.UINT8)
    writer.add_key_value("t.i64s", [-1, 2**40], GGUFValueType.ARRAY, GGUFValueType.INT64)
    writer.add_array("t.bools", [True, False, True])
    rng = np.random.default_rng(0)
    tensors: dict[str, np.ndarray] = {
        "f32.weight": rng.standard_normal((3, 5)).astype(np.float32),
        "f16.weight": rng.standard_normal(7).astype(np.float16),
        "bf16.weight": rng.integers(0, 2**16, (2, 4), dtype=np.uint16),
        "q8.weight": rng.integers(0, 256, (4, 2 * 34), dtype=np.uint8),  # 4 rows x 64 values
        "q4k.weight": rng.integers(0, 256, (2, 144), dtype=np.uint8),  # 2 rows x 256 values
        "i32.weight": rng.integers(-9, 9, (2, 2, 3), dtype=np.int32),
    }
    raw_types = {
        "bf16.weight": GGMLQuantizationType.BF16,
        "q8.weight": GGMLQuantizationType.Q8_0,
        "q4k.weight": GGMLQuantizationType.Q4_K,
    }
    for name, array in tensors.items():
        raw_type = raw_types.get(name)
        if raw_type == GGMLQuantizationType.BF16:
            writer.add_tensor(name, array, raw_shape=array.shape, raw_dtype=raw_type)
        else:
            writer.add_tensor(name, array, raw_dtype=raw_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


@pytest.mark.parametrize("alignment", [None, 64])
def test_writer_file_round_trips(tmp_path: Path, alignment: int | None) -> None:
    path = tmp_path / "sample.gguf"
    arrays = write_sample(path, alignment=alignment)

    model = read_gguf(path)

    expected_metadata = {
        "general.architecture": "llama",
        "t.u8": 200,
        "t.i8": -5,
        "t.u16": 60000,
        "t.i16": -30000,
        "t.u32": 4_000_000_000,
        "t.i32": -2_000_000_000,
        "t.f32": 0.25,
        "t.u64": 2**64 - 1,
        "t.i64": -(2**62),
        "t.f64": 1e300,
        "t.bool": True,
        "t.str": "héllo ✓",
        "t.strs": ["a", "", "ü", "<tok>"],
        "t.floats": [0.5, -1.5, 3.0],
        "t.u8s": [1, 2, 255],
        "t.i64s": [-1, 2**40],
        "t.bools": [True, False, True],
    }
    if alignment is not None:
        expected_metadata["general.alignment"] = alignment
    assert model.metadata == expected_metadata
    assert model.architecture == "llama"
    assert list(model.tensors) == list(arrays)
    expected = {
        "f32.weight": ("F32", (3, 5), (3, 20)),
        "f16.weight": ("F16", (7,), (14,)),
        "bf16.weight": ("BF16", (2, 4), (2, 8)),
        "q8.weight": ("Q8_0", (4, 64), (4, 68)),
        "q4k.weight": ("Q4_K", (2, 256), (2, 144)),
        "i32.weight": ("I32", (2, 2, 3), (2, 2, 12)),
    }
    for name, (qtype, shape, byte_shape) in expected.items():
        tensor = model.tensors[name]
        assert (tensor.name, tensor.qtype, tensor.shape) == (name, qtype, shape)
        assert tensor.data.dtype == np.uint8 and tensor.data.shape == byte_shape
        assert isinstance(tensor.data, np.memmap) and not tensor.data.flags.writeable
        assert tensor.data.tobytes() == arrays[name].tobytes()
    np.testing.assert_array_equal(
        model.tensors["f32.weight"].data.view(np.float32), arrays["f32.weight"]
    )


def test_matches_gguf_reader_on_writer_file(tmp_path: Path) -> None:
    path = tmp_path / "sample.gguf"
    write_sample(path)
    ours, oracle = read_gguf(path), read_gguf_with_gguf_reader(path)
    assert ours.metadata == oracle.metadata
    assert list(ours.tensors) == list(oracle.tensors)
    for name, tensor in ours.tensors.items():
        theirs = oracle.tensors[name]
        assert (tensor.qtype, tensor.shape) == (theirs.qtype, theirs.shape)
        np.testing.assert_array_equal(tensor.data, theirs.data)


def test_without_tensors_and_validate(tmp_path: Path) -> None:
    path = tmp_path / "sample.gguf"
    write_sample(path)
    assert read_gguf(path, with_tensors=False).tensors == {}
    header = validate_gguf_header(path)
    assert header.version == 3 and header.alignment == 32 and len(header.tensors) == 6
    assert header.data_offset % 32 == 0


def test_nested_arrays_and_version_2() -> None:
    inner = struct.pack("<IQ", GGUFValueType.INT32, 2) + struct.pack("<ii", 7, -7)
    nested = struct.pack("<IQ", GGUFValueType.ARRAY, 2) + inner + inner
    blob = enc_file([enc_kv("n", GGUFValueType.ARRAY, nested)], version=2)
    header = parse_gguf_header(blob, "ok.gguf")
    assert header.version == 2 and header.metadata == {"n": [[7, -7], [7, -7]]}


def test_tensor_view_from_bytes() -> None:
    data = np.arange(8, dtype=np.float32).tobytes()
    blob = enc_file([], [enc_tensor("w", [4, 2], F32, 0)], data)
    info = parse_gguf_header(blob, "ok.gguf").tensors[0]
    assert (info.shape, info.byte_shape, info.nbytes, info.qtype) == ((2, 4), (2, 16), 32, "F32")
    assert info.offset == len(blob) - 32


# -- files that are not GGUF at all ----------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no such file"):
        read_gguf(tmp_path / "nope.gguf")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="is a directory"):
        read_gguf(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(ModelFileError, match="file is empty"):
        validate_gguf_header(tmp_path / "empty.gguf")


def test_wrong_magic(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ModelFileError, match=r"model.gguf: not a GGUF file \(starts with b'PK"):
        read_gguf(tmp_path / "model.gguf")


def test_short_files() -> None:
    assert "truncated" in parse_error(b"GGU")
    assert "truncated" in parse_error(b"GGUF\x03\0\0\0" + b"\0" * 10)
    assert "not a GGUF file" in parse_error(b"{}")


def test_versions() -> None:
    assert "unsupported GGUF version 1 " in parse_error(enc_file([], version=1))
    assert "unsupported GGUF version 4 " in parse_error(enc_file([], version=4))
    big_endian = b"GGUF" + struct.pack(">IQQ", 3, 0, 0)
    assert "big-endian GGUF (version 3) is not supported" in parse_error(big_endian)


# -- malformed headers -----------------------------------------------------------------------


def test_absurd_counts() -> None:
    for tensors, kvs in [(2**63, 0), (0, 2**64 - 1), (10**6, 10**6)]:
        blob = b"GGUF" + struct.pack("<IQQ", 3, tensors, kvs) + b"\0" * 64
        assert "can hold" in parse_error(blob)


def test_string_lengths() -> None:
    huge_key = struct.pack("<Q", 2**63) + b"abc" + b"\0" * 40
    message = parse_error(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + huge_key)
    assert "truncated" in message and "name of metadata key #0" in message
    huge_value = enc_kv("k", GGUFValueType.STRING, struct.pack("<Q", 2**64 - 1) + b"x" * 20)
    assert "string value of metadata key 'k'" in parse_error(enc_file([huge_value]))


def test_invalid_utf8() -> None:
    assert "metadata key #0 is not valid UTF-8" in parse_error(
        enc_file([enc_kv(b"\xff", GGUFValueType.UINT32, struct.pack("<I", 1))])
    )
    bad_value = enc_kv("k", GGUFValueType.STRING, enc_str(b"ok\xc3"))
    assert "string value of metadata key 'k' is not valid UTF-8" in parse_error(
        enc_file([bad_value])
    )
    bad_item = enc_kv(
        "toks", GGUFValueType.ARRAY, struct.pack("<IQ", 8, 2) + enc_str("a") + enc_str(b"\xfe")
    )
    assert "element 1 of array 'toks' is not valid UTF-8" in parse_error(enc_file([bad_item]))
    blob = enc_file([], [enc_tensor(b"w\xff", [32], F32, 0)], b"\0" * 128)
    assert "name of tensor #0 is not valid UTF-8" in parse_error(blob)


def test_array_lengths() -> None:
    for item_type in (GGUFValueType.UINT8, GGUFValueType.FLOAT64, GGUFValueType.STRING):
        payload = struct.pack("<IQ", item_type, 2**62) + b"\0" * 32
        message = parse_error(enc_file([enc_kv("arr", GGUFValueType.ARRAY, payload)]))
        assert "truncated" in message and "array 'arr'" in message
    unknown = struct.pack("<IQ", 13, 1) + b"\0" * 8
    assert "unknown element type 13" in parse_error(
        enc_file([enc_kv("arr", GGUFValueType.ARRAY, unknown)])
    )


def test_array_nesting_is_bounded() -> None:
    payload = struct.pack("<IQ", GGUFValueType.ARRAY, 1) * 10 + struct.pack("<IQ", 0, 0)
    assert "nests arrays deeper than" in parse_error(
        enc_file([enc_kv("deep", GGUFValueType.ARRAY, payload)])
    )


def test_metadata_keys() -> None:
    assert "duplicate metadata key 'a'" in parse_error(
        enc_file([enc_u32_kv("a", 1), enc_u32_kv("a", 2)])
    )
    assert "unknown value type 99" in parse_error(enc_file([enc_kv("a", 99, b"\0" * 8)]))


def test_alignment_key() -> None:
    assert "not a power of two" in parse_error(enc_file([enc_u32_kv("general.alignment", 48)]))
    assert "not a power of two" in parse_error(enc_file([enc_u32_kv("general.alignment", 0)]))
    as_u64 = enc_kv("general.alignment", GGUFValueType.UINT64, struct.pack("<Q", 32))
    assert "must be a uint32" in parse_error(enc_file([as_u64]))


def tensor_error(*tensors: bytes, data_bytes: int = 256) -> str:
    return parse_error(enc_file([], list(tensors), b"\0" * data_bytes))


def test_tensor_dims() -> None:
    assert "5 dimensions (must be 1 to 4)" in tensor_error(enc_tensor("w", [1] * 5, F32, 0))
    assert "0 dimensions" in tensor_error(enc_tensor("w", [], F32, 0))
    assert "invalid dimension 0" in tensor_error(enc_tensor("w", [4, 0], F32, 0))
    assert "invalid dimension 18446744073709551615" in tensor_error(
        enc_tensor("w", [2**64 - 1], F32, 0)
    )
    assert "overflows int64" in tensor_error(enc_tensor("w", [2**32, 2**32], F32, 0))
    message = tensor_error(enc_tensor("w", [2**30, 2**30], F32, 0))
    assert "runs past the end of the file" in message and "truncated" in message


def test_tensor_types() -> None:
    assert "tensor 'w' has unsupported tensor type 4" in tensor_error(enc_tensor("w", [32], 4, 0))
    assert "unsupported tensor type 4294967295" in tensor_error(enc_tensor("w", [32], 2**32 - 1, 0))
    message = tensor_error(enc_tensor("w", [48, 2], Q8_0, 0))
    assert "rows of 48 elements are not a multiple of Q8_0's block size 32" in message


def test_tensor_placement() -> None:
    assert "not aligned to 32 bytes" in tensor_error(enc_tensor("w", [4], F32, 8))
    assert "duplicate tensor name 'w'" in tensor_error(
        enc_tensor("w", [4], F32, 0), enc_tensor("w", [4], F32, 32)
    )
    overlap = tensor_error(enc_tensor("a", [16], F32, 0), enc_tensor("b", [4], F32, 32))
    assert "tensors 'a' and 'b' overlap" in overlap
    assert "runs past the end" in tensor_error(enc_tensor("w", [4], F32, 2**64 - 32))
    assert "longer than ggml's limit" in tensor_error(enc_tensor("w" * 64, [4], F32, 0))
    no_data = enc_file([], [enc_tensor("w", [4], F32, 0)])
    assert "truncated file: tensor data should start" in parse_error(no_data[:-1])
