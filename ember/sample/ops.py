"""Batched logit transforms and the random draw, as pure functions over [R, V] float32 tensors.

Each takes per-row settings as tensors so rows with different parameters share one op. Masking
functions return a bool "remove" mask rather than editing logits, so tests can check the kept sets
directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def apply_penalties(
    logits: torch.Tensor,
    prompt_mask: torch.Tensor,
    output_counts: torch.Tensor,
    repetition: torch.Tensor,
    frequency: torch.Tensor,
    presence: torch.Tensor,
) -> torch.Tensor:
    """Penalised copy of logits [R, V].

    prompt_mask [R, V] bool, output_counts [R, V] float32, the penalties [R]. Repetition (HF/vLLM
    semantics) touches every token seen in prompt or output: positive logits are divided by the
    penalty, the rest multiplied, so a penalty > 1 always lowers them. Frequency and presence
    (OpenAI semantics) look at the output only: logit -= frequency * count + presence * [count>0].
    """
    in_output = output_counts > 0
    seen = prompt_mask | in_output
    rep = repetition.unsqueeze(1)
    penalised = torch.where(logits > 0, logits / rep, logits * rep)
    result = torch.where(seen, penalised, logits)
    result -= frequency.unsqueeze(1) * output_counts
    result -= presence.unsqueeze(1) * in_output
    return result


def min_p_remove_mask(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """[R, V] True where p < min_p * p_max; min_p [R] (0 keeps everything).

    Compared in log space (logit - max_logit < log min_p), which is the same inequality without a
    softmax; log 0 = -inf keeps every finite logit.
    """
    max_logit = logits.amax(dim=-1, keepdim=True)
    return (logits - max_logit) < torch.log(min_p).unsqueeze(1)


def top_k_top_p_remove_mask(
    logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """[R, V] True for tokens outside the top_k and then outside the top_p nucleus.

    top_k [R] int64 (0 disables) keeps exactly k tokens: ties at the boundary go to the lower id,
    the same tie rule as greedy, so top_k=1 is greedy. top_p [R] (1 disables) is applied to the
    distribution left after top_k and keeps the smallest prefix of the sorted tokens whose mass
    reaches top_p: a token survives when the mass strictly ahead of it is below top_p.
    """
    num_rows, vocab = logits.shape
    # stable descending sort: equal logits stay in id order
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)
    position = torch.arange(vocab).unsqueeze(0)  # [1, V]
    k = torch.where(top_k > 0, top_k, vocab).unsqueeze(1)
    remove_sorted = position >= k
    uses_top_p = top_p < 1.0
    if bool(uses_top_p.any()):
        probs = sorted_logits.masked_fill(remove_sorted, float("-inf")).softmax(dim=-1)
        mass_ahead = probs.cumsum(dim=-1) - probs
        remove_sorted |= (mass_ahead >= top_p.unsqueeze(1)) & uses_top_p.unsqueeze(1)
    remove = torch.empty_like(remove_sorted)
    remove.scatter_(1, order, remove_sorted)
    return remove


def exponential_race(
    probs: torch.Tensor,
    row_generators: Sequence[torch.Generator | None],
    shared_generator: torch.Generator | None,
) -> torch.Tensor:
    """One token per row of probs [R, V], drawn as argmax(p / q) with q ~ Exp(1).

    This picks token i with probability p_i (the exponential-race form of the Gumbel-max trick)
    and needs exactly V draws per row, so a row with its own generator advances it by the same
    amount every step whatever else is in the batch. Rows with generator None share
    shared_generator (None: torch's default generator) in one call.
    """
    q = torch.empty_like(probs)
    shared_rows = [i for i, gen in enumerate(row_generators) if gen is None]
    if len(shared_rows) == len(row_generators):
        q.exponential_(generator=shared_generator)
    elif shared_rows:
        index = torch.tensor(shared_rows)
        q[index] = torch.empty(len(shared_rows), probs.shape[1]).exponential_(
            generator=shared_generator
        )
    for row, gen in enumerate(row_generators):
        if gen is not None:
            q[row].exponential_(generator=gen)
    # A zero draw would make 0/0 = NaN on a masked token, and argmax treats NaN as the maximum.
    q.clamp_(min=torch.finfo(q.dtype).tiny)
    return (probs / q).argmax(dim=-1)
