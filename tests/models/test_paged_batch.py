"""A batch of sequences over the paged KV cache computes what each sequence computes alone.

Every architecture, tiny random weights: sequences join mid-way, prefill in chunks of several
sizes (both sides of the paged kernel / SDPA split) beside other sequences' decode steps, and
sliding-window groups drop the blocks behind their window (pointed at a NaN-filled null block,
so a read of a dropped block would show in the logits).
"""

from __future__ import annotations

import pytest
import torch

from ember.layers.paged_attention import BatchContext, PagedKVCache, kv_groups
from ember.models.loader import LoadedModel, load_model_path
from tests.models.tiny import SPECS, VOCAB, build_hf_model, save_gguf

pytestmark = pytest.mark.models

BLOCK = 4


@pytest.fixture(scope="module", params=sorted(SPECS))
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    model = build_hf_model(request.param)
    path = save_gguf(model, tmp_path_factory.mktemp(request.param) / "model.gguf")
    return load_model_path(path, with_tokenizer=False)


class Sequence:
    def __init__(self, tokens: list[int]) -> None:
        self.tokens = tokens  # prompt, then whatever gets generated
        self.computed = 0
        self.blocks: list[list[int]] = []  # per KV group


def alone_logits(
    loaded: LoadedModel, tokens: list[int], kv_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    model = loaded.model
    cache = model.new_cache(len(tokens), kv_dtype)
    return model.compute_logits(model(torch.tensor(tokens), cache, 0))


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.bfloat16])
def test_batched_chunks_and_decodes_match_each_sequence_alone(
    loaded: LoadedModel, kv_dtype: torch.dtype
) -> None:
    model = loaded.model
    groups = kv_groups(loaded.config)
    kv = PagedKVCache(loaded.config, num_blocks=256, block_size=BLOCK, dtype=kv_dtype)
    for storage in (*kv.keys, *kv.values):
        storage[0] = float("nan")  # the null block
    free = list(range(1, 256))
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (23, 9, 30)]
    seqs = [Sequence(p) for p in prompts]
    for s in seqs:
        s.blocks = [[] for _ in groups]
    # Per step: tokens each sequence computes (0: not yet arrived / idle).
    schedule = [(12, 9, 0), (11, 1, 0), (1, 1, 20), (1, 1, 10), (1, 0, 1), (1, 1, 1)]
    for step in schedule:
        active = [(s, n) for s, n in zip(seqs, step, strict=True) if n]
        for s, n in active:
            while len(s.tokens) < s.computed + n:  # decode: extend greedily from alone_logits
                s.tokens.append(int(alone_logits(loaded, s.tokens)[-1].argmax()))
        query_lens, seq_lens, tables = [], [], [[] for _ in groups]
        for s, n in active:
            end = s.computed + n
            for gi, group in enumerate(groups):
                while len(s.blocks[gi]) * BLOCK < end:
                    s.blocks[gi].append(free.pop())
                table = list(s.blocks[gi])
                if group.sliding_window is not None:
                    # Blocks wholly behind the first new query's window are never read.
                    first_visible = max(0, s.computed - group.sliding_window + 1)
                    for b in range(first_visible // BLOCK):
                        table[b] = 0
                tables[gi].append(table)
            query_lens.append(n)
            seq_lens.append(end)
        context = BatchContext(kv, query_lens, seq_lens, tables)
        ids = torch.tensor([t for s, n in active for t in s.tokens[s.computed : s.computed + n]])
        logits = model.compute_logits(model.forward(ids, context.positions, context))
        row = 0
        for s, n in active:
            s.computed += n
            expected = alone_logits(loaded, s.tokens[: s.computed], kv_dtype)[-n:]
            got = logits[row : row + n]
            row += n
            assert not got.isnan().any()
            tolerance = 2e-4 if kv_dtype == torch.float32 else 0.05
            torch.testing.assert_close(got, expected, atol=tolerance, rtol=0.0)


def test_kv_groups_split_sliding_and_global_layers_evenly(loaded: LoadedModel) -> None:
    config = loaded.config
    groups = kv_groups(config)
    assert sorted(layer for g in groups for layer in g.layers) == list(range(config.num_layers))
    assert len({len(g.layers) for g in groups}) == 1
    for g in groups:
        assert {config.is_sliding(layer) for layer in g.layers} == {g.sliding_window is not None}


def test_batch_context_refuses_too_few_blocks(loaded: LoadedModel) -> None:
    kv = PagedKVCache(loaded.config, num_blocks=8, block_size=BLOCK, dtype=torch.float32)
    tables = [[[1]] for _ in kv.groups]
    with pytest.raises(ValueError, match="cannot hold"):
        BatchContext(kv, [5], [5], tables)
