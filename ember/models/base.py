"""The decoder-only language model shell shared by every architecture.

An architecture module supplies its config parsers, its Hugging Face -> GGUF name map and its
block; this shell owns the embedding, the rotary tables, the final norm and the LM head.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from ember.config import ModelConfig
from ember.layers.attention import AttentionContext, SequenceContext, SequenceKVCache
from ember.layers.linear import QuantEmbedding, QuantLinear
from ember.layers.norm import RMSNorm
from ember.layers.rotary import RotaryEmbedding
from ember.loader.weights import WeightStore


class Block(Protocol):
    def __call__(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        context: AttentionContext,
        rotary: RotaryEmbedding,
        positions: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


BlockFactory = Callable[[WeightStore, int, ModelConfig], Block]

PREFILL_UBATCH = 256
"""Tokens per forward call when prefilling one long prompt. Measured on this CPU (see
benchmarks/RESULTS.md): 256-token steps keep a layer's activations in L2 and run pp512 5-15%
faster than one 512-token step, and halve the transient activation memory."""


class DecoderLM:
    def __init__(
        self,
        config: ModelConfig,
        store: WeightStore,
        make_block: BlockFactory,
        norm_offset: float = 0.0,
    ) -> None:
        self.config = config
        self.embed = QuantEmbedding(store.take("token_embd.weight"))
        self.layers = [make_block(store, i, config) for i in range(config.num_layers)]
        output_norm = store.take("output_norm.weight").to_float() + norm_offset
        self.norm = RMSNorm(output_norm, config.rms_norm_eps)
        output = store.take_optional("output.weight")
        self.lm_head = QuantLinear(output) if output is not None else self.embed.as_linear()
        freq_factors = store.take_optional("rope_freqs.weight")
        factors = freq_factors.to_float() if freq_factors is not None else None
        rotary_dim = config.rotary_dim
        self.rotary_global = RotaryEmbedding(
            config.head_dim,
            config.rope,
            interleaved=config.rope_interleaved,
            rotary_dim=rotary_dim,
            freq_factors=factors,
        )
        self.rotary_local = self.rotary_global
        if config.rope_local is not None:
            self.rotary_local = RotaryEmbedding(
                config.head_dim,
                config.rope_local,
                interleaved=config.rope_interleaved,
                rotary_dim=rotary_dim,
            )

    def new_cache(self, capacity: int, dtype: torch.dtype = torch.float16) -> SequenceKVCache:
        """A sequence's KV cache; fp16 by default, like the serving engine's pages and
        llama.cpp's cache (float32 for exact comparisons: prompts then take fp32 attention)."""
        c = self.config
        return SequenceKVCache(c.num_layers, capacity, c.num_kv_heads, c.head_dim, dtype)

    @torch.inference_mode()
    def __call__(self, token_ids: torch.Tensor, cache: SequenceKVCache, start: int) -> torch.Tensor:
        """Run tokens at positions [start, start+T) of one sequence -> final hidden [T, hidden]."""
        positions = torch.arange(start, start + token_ids.shape[0])  # int64
        hidden = self.forward(token_ids, positions, SequenceContext(cache, start))
        cache.length = start + token_ids.shape[0]
        return hidden

    @torch.inference_mode()
    def forward(
        self, token_ids: torch.Tensor, positions: torch.Tensor, context: AttentionContext
    ) -> torch.Tensor:
        """token_ids, positions: [T] int64, in the context's order -> hidden [T, hidden]."""
        x = self.embed(token_ids)
        if self.config.embedding_scale != 1.0:
            x = x * self.config.embedding_scale
        residual: torch.Tensor | None = None
        for index, block in enumerate(self.layers):
            rotary = self.rotary_local if self.config.is_sliding(index) else self.rotary_global
            x, residual = block(x, residual, context, rotary, positions)
        if residual is None:  # a model with no layers
            return self.norm(x)
        return self.norm.add_and_norm(x, residual)[0]

    @torch.inference_mode()
    def prefill(
        self, token_ids: torch.Tensor, cache: SequenceKVCache, start: int = 0
    ) -> torch.Tensor:
        """Like calling the model, in steps of PREFILL_UBATCH tokens -> final hidden [T, hidden]."""
        count = token_ids.shape[0]
        if count <= PREFILL_UBATCH:
            return self(token_ids, cache, start)
        hidden = torch.empty(count, self.config.hidden_size)
        for offset in range(0, count, PREFILL_UBATCH):
            chunk = token_ids[offset : offset + PREFILL_UBATCH]
            hidden[offset : offset + chunk.shape[0]] = self(chunk, cache, start + offset)
        return hidden

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[T, hidden] -> float32 logits [T, vocab]."""
        logits = self.lm_head(hidden).float()
        if self.config.final_logit_softcap is not None:
            cap = self.config.final_logit_softcap
            logits = torch.tanh(logits / cap) * cap
        return logits
