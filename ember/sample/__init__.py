"""Turning logits into tokens: the batched sampler, per-request sampling state, logprobs."""

from ember.sample.logprobs import Logprob, PositionLogprobs, prompt_logprobs, score_tokens
from ember.sample.sampler import Sampler, SamplerOutput
from ember.sample.state import RequestSamplingState

__all__ = [
    "Logprob",
    "PositionLogprobs",
    "RequestSamplingState",
    "Sampler",
    "SamplerOutput",
    "prompt_logprobs",
    "score_tokens",
]
