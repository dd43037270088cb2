"""Stop sequences on streamed text: hold back what could be the start of one, cut at the first match."""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: list[str] | None) -> None:
        self.stops = stops or []
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Return the text that is safe to send now; after a match, everything after it is dropped."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        buffer = self._held + text
        cut = min((index for stop in self.stops if (index := buffer.find(stop)) >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return buffer[:cut]
        keep = self._longest_partial_stop(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _longest_partial_stop(self, buffer: str) -> int:
        longest = 0
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(buffer)), 0, -1):
                if buffer.endswith(stop[:length]):
                    longest = max(longest, length)
                    break
        return longest
