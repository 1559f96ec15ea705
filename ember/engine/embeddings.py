"""Sentence embeddings from a decoder: the final hidden states (after the model's last norm),
mean-pooled over the tokens and L2-normalised.

Generative models carry no pooling of their own; mean pooling is the common choice for them (an
embedding model's GGUF names its pooling in `<arch>.pooling_type`, which a later model type can
honour here). The forward pass uses a private contiguous KV cache, so it never touches the
serving engine's paged cache: callers only need to keep two embed() calls from running on the
same thread pool at once if they want to bound memory (the server runs them one at a time).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ember.models.base import DecoderLM


@torch.inference_mode()
def embed(model: DecoderLM, token_ids: Sequence[int]) -> torch.Tensor:
    """Unit-length float32 vector [hidden] for one token sequence (at least one token)."""
    if not token_ids:
        raise ValueError("embed() needs at least one token")
    ids = torch.tensor(list(token_ids), dtype=torch.int64)
    cache = model.new_cache(len(ids), dtype=torch.bfloat16)
    hidden = model.prefill(ids, cache)  # [T, hidden], already through the final norm
    pooled = hidden.float().mean(dim=0)
    return torch.nn.functional.normalize(pooled, dim=0)
