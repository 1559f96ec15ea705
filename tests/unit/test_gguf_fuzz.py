"""Corrupt a small valid GGUF in many ways: the parser must accept it or raise ModelFileError.

Never another exception, never a hang, never a large allocation driven by a header value.
"""

from __future__ import annotations

import contextlib
import random
import signal
import struct
import tracemalloc
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from ember.errors import ModelFileError
from ember.loader.gguf_header import GGUFHeader, parse_gguf_header

# The sample is a few KB; parsing any corruption of it must stay far below this.
MAX_PARSE_ALLOCATION = 2 * 1024 * 1024
PARSE_TIME_LIMIT_SECONDS = 5.0

Parse = Callable[[bytes], GGUFHeader | ModelFileError]

U64_VALUES = [0, 1, 2**31, 2**32 - 1, 2**32, 10**12, 2**63 - 1, 2**63, 2**64 - 8, 2**64 - 1]
U32_VALUES = [0, 1, 5, 13, 255, 2**16, 2**31, 2**32 - 8, 2**32 - 1]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, GGUFReader]:
    path = tmp_path_factory.mktemp("fuzz") / "sample.gguf"
    writer = GGUFWriter(path, "llama")
    writer.add_custom_alignment(64)
    writer.add_uint32("llama.block_count", 2)
    writer.add_float32("llama.rope.freq_base", 10000.0)
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_array("tokenizer.ggml.tokens", ["<s>", "a", "bc", "déf", "</s>"])
    writer.add_array("tokenizer.ggml.merges", ["a b", "bc d"])
    writer.add_key_value(
        "tokenizer.ggml.token_type", [1, 1, 1, 1, 3], GGUFValueType.ARRAY, GGUFValueType.INT32
    )
    writer.add_array("tokenizer.ggml.scores", [0.0, -1.0, -2.0, -3.0, 0.0])
    writer.add_tensor("a.weight", np.ones((2, 8), dtype=np.float32))
    writer.add_tensor("b.weight", np.zeros(4, dtype=np.float16))
    q8 = np.zeros((2, 34), dtype=np.uint8)
    writer.add_tensor("c.weight", q8, raw_dtype=GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes(), GGUFReader(path)


@pytest.fixture(scope="module")
def sample_header(sample: tuple[bytes, GGUFReader]) -> GGUFHeader:
    return parse_gguf_header(sample[0], "sample.gguf")


class ParseTookTooLong(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def on_alarm(signum: int, frame: object) -> None:
        raise ParseTookTooLong

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def guarded_parse() -> Iterator[Parse]:
    """parse(blob) -> header or the ModelFileError raised; fails on anything else."""
    tracemalloc.start()

    def parse(blob: bytes) -> GGUFHeader | ModelFileError:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        try:
            with time_limit(PARSE_TIME_LIMIT_SECONDS):
                result: GGUFHeader | ModelFileError = parse_gguf_header(blob, "fuzz.gguf")
        except ModelFileError as exc:
            result = exc
            message = str(exc)
            assert message.startswith("fuzz.gguf: ") and "\n" not in message
        _, peak = tracemalloc.get_traced_memory()
        assert peak - before < MAX_PARSE_ALLOCATION
        return result

    yield parse
    tracemalloc.stop()


def header_int_fields(reader: GGUFReader) -> list[tuple[int, int]]:
    """(offset, size) of every integer the header stores: counts, lengths, types, dims, offsets."""
    base = reader.data.ctypes.data
    fields: set[tuple[int, int]] = set()
    all_fields = list(reader.fields.values()) + [t.field for t in reader.tensors]
    for field in all_fields:
        for part in field.parts:
            if part.dtype.kind in "ui" and part.dtype.itemsize in (4, 8):
                start = part.ctypes.data - base
                for index in range(min(part.size, 4)):
                    fields.add((start + index * part.dtype.itemsize, part.dtype.itemsize))
    return sorted(fields)


def test_sample_is_valid(sample_header: GGUFHeader) -> None:
    assert sample_header.alignment == 64
    assert [t.name for t in sample_header.tensors] == ["a.weight", "b.weight", "c.weight"]
    assert sample_header.metadata["tokenizer.ggml.tokens"][3] == "déf"


def test_truncation_anywhere_is_reported(
    sample: tuple[bytes, GGUFReader], sample_header: GGUFHeader, guarded_parse: Parse
) -> None:
    blob = sample[0]
    data_end = max(t.offset + t.nbytes for t in sample_header.tensors)
    cut_points = list(range(sample_header.data_offset + 8)) + list(range(data_end - 40, data_end))
    for cut in cut_points:
        result = guarded_parse(blob[:cut])
        assert isinstance(result, ModelFileError), cut
        assert "truncated" in str(result) or cut < 4, (cut, str(result))
    assert isinstance(guarded_parse(blob[:data_end]), GGUFHeader)


def test_absurd_header_integers(sample: tuple[bytes, GGUFReader], guarded_parse: Parse) -> None:
    blob, reader = sample
    fields = header_int_fields(reader)
    assert len(fields) > 30  # counts, key/name lengths, value types, array lengths, dims, offsets
    outcomes = {"parsed": 0, "rejected": 0}
    for offset, size in fields:
        (original,) = struct.unpack_from("<Q" if size == 8 else "<I", blob, offset)
        values = U64_VALUES if size == 8 else U32_VALUES
        for value in [*values, original + 1, original - 1]:
            value %= 2 ** (8 * size)
            corrupt = bytearray(blob)
            corrupt[offset : offset + size] = value.to_bytes(size, "little")
            result = guarded_parse(bytes(corrupt))
            outcomes["parsed" if isinstance(result, GGUFHeader) else "rejected"] += 1
    assert outcomes["rejected"] > outcomes["parsed"] > 0


def test_random_byte_flips(
    sample: tuple[bytes, GGUFReader], sample_header: GGUFHeader, guarded_parse: Parse
) -> None:
    blob = sample[0]
    rng = random.Random(1234)
    for _ in range(400):
        corrupt = bytearray(blob)
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(sample_header.data_offset)
            corrupt[position] = rng.choice([0x00, 0xFF, 0x80, rng.randrange(256)])
        guarded_parse(bytes(corrupt))


def test_version_and_counts_never_parse(
    sample: tuple[bytes, GGUFReader], guarded_parse: Parse
) -> None:
    blob = sample[0]
    for offset, values in [(4, U32_VALUES), (8, U64_VALUES[2:]), (16, U64_VALUES[2:])]:
        for value in values:
            corrupt = bytearray(blob)
            size = 4 if offset == 4 else 8
            corrupt[offset : offset + size] = value.to_bytes(size, "little")
            assert isinstance(guarded_parse(bytes(corrupt)), ModelFileError), (offset, value)


def test_memory_guard_sees_numpy_allocations(guarded_parse: Parse) -> None:
    # The guard must be able to fail, or the tests above prove nothing.
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    np.ones(MAX_PARSE_ALLOCATION, dtype=np.uint8)
    _, peak = tracemalloc.get_traced_memory()
    assert peak - before >= MAX_PARSE_ALLOCATION
