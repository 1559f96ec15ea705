"""Requests kept in policy order: the waiting queue and the running set both use it.

FCFS orders by arrival; the priority policy by (priority, arrival), lower first. The first
request is the next to admit (waiting) or the first to serve (running); the last one is the
first to preempt. Keys never change, so a preempted request goes back to its old place, ahead of
everything that arrived after it. Sizes are bounded by max_waiting and max_num_seqs, so a sorted
list is simpler than a heap and fast enough.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator

from ember.core.request import Request


def _fcfs_key(request: Request) -> tuple[int, ...]:
    return (request.arrival,)


def _priority_key(request: Request) -> tuple[int, ...]:
    return (request.priority, request.arrival)


class RequestQueue:
    def __init__(self, policy: str) -> None:
        self._key: Callable[[Request], tuple[int, ...]] = (
            _priority_key if policy == "priority" else _fcfs_key
        )
        self._requests: list[Request] = []

    def add(self, request: Request) -> None:
        bisect.insort(self._requests, request, key=self._key)

    def remove(self, request: Request) -> None:
        self._requests.remove(request)

    def first(self) -> Request:
        return self._requests[0]

    def last(self) -> Request:
        return self._requests[-1]

    def __getitem__(self, index: int) -> Request:
        return self._requests[index]

    def __len__(self) -> int:
        return len(self._requests)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._requests)

    def __contains__(self, request: object) -> bool:
        return request in self._requests
