"""Ember's GGUF parser against gguf.GGUFReader on the two real anchor models.

GGUFReader needs ~10 s for Gemma's 262k-token vocabulary, hence the `slow` marker. The models
are pulled through Ember's library on first use.
"""

from __future__ import annotations

import numpy as np
import pytest

from ember.loader.gguf_file import GGUFFile, read_gguf, read_gguf_with_gguf_reader
from tests.conftest import real_model_path

MODELS = {
    "smollm2": ("SmolLM2-135M-Instruct.Q4_1.gguf", "llama", 272),
    "gemma3": ("gemma-3-270m-q4_k_m.gguf", "gemma3", 236),
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=sorted(MODELS))
def both_readers(request: pytest.FixtureRequest) -> tuple[GGUFFile, GGUFFile, str, int]:
    file_name, architecture, n_tensors = MODELS[request.param]
    path = real_model_path(file_name)
    return read_gguf(path), read_gguf_with_gguf_reader(path), architecture, n_tensors


def test_metadata_matches(both_readers: tuple[GGUFFile, GGUFFile, str, int]) -> None:
    ours, oracle, architecture, _ = both_readers
    assert ours.architecture == architecture
    assert ours.metadata.keys() == oracle.metadata.keys()
    for key, value in oracle.metadata.items():
        assert ours.metadata[key] == value, key
        assert type(ours.metadata[key]) is type(value), key


def test_tensor_infos_match(both_readers: tuple[GGUFFile, GGUFFile, str, int]) -> None:
    ours, oracle, _, n_tensors = both_readers
    assert list(ours.tensors) == list(oracle.tensors)
    assert len(ours.tensors) == n_tensors
    for name, tensor in ours.tensors.items():
        theirs = oracle.tensors[name]
        assert (tensor.name, tensor.qtype, tensor.shape) == (name, theirs.qtype, theirs.shape)
        assert tensor.data.dtype == np.uint8 and tensor.data.shape == theirs.data.shape, name
        assert not tensor.data.flags.writeable
        # First and last rows pin the mapping of every tensor without reading whole files.
        np.testing.assert_array_equal(
            tensor.data.reshape(-1, tensor.data.shape[-1])[[0, -1]],
            theirs.data.reshape(-1, theirs.data.shape[-1])[[0, -1]],
        )


def test_sampled_tensor_bytes_match(both_readers: tuple[GGUFFile, GGUFFile, str, int]) -> None:
    ours, oracle, _, _ = both_readers
    names = list(ours.tensors)
    for name in names[::23] + [names[-1]]:
        np.testing.assert_array_equal(ours.tensors[name].data, oracle.tensors[name].data)
