"""Stop strings over streamed text: find them, and hold back text that may be one's prefix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StopMatch:
    text: str
    """The output text up to the stop (including it when asked to)."""
    stop: str


class StopChecker:
    def __init__(self, stops: list[str], include_in_output: bool) -> None:
        self.stops = [s for s in stops if s]
        self.include = include_in_output
        self.longest = max((len(s) for s in self.stops), default=0)

    def find(self, text: str, new_from: int) -> StopMatch | None:
        """Earliest stop string that ends in text[new_from:] (only new text can complete one)."""
        if not self.stops:
            return None
        best: tuple[int, str] | None = None
        window_start = max(0, new_from - self.longest + 1)
        for stop in self.stops:
            at = text.find(stop, window_start)
            if at != -1 and (best is None or at < best[0]):
                best = (at, stop)
        if best is None:
            return None
        at, stop = best
        return StopMatch(text[: at + len(stop)] if self.include else text[:at], stop)

    def safe_length(self, text: str) -> int:
        """How much of `text` can be streamed now: a tail that could begin a stop string waits."""
        if not self.stops:
            return len(text)
        for hold in range(min(self.longest - 1, len(text)), 0, -1):
            tail = text[-hold:]
            if any(stop.startswith(tail) for stop in self.stops):
                return len(text) - hold
        return len(text)
