"""Stop strings matched across token boundaries. Text is released only once it cannot be the
start of a stop string, so a client never sees part of a stop string that later completes."""

from __future__ import annotations


class StopStringMatcher:
    def __init__(self, stop: list[str]) -> None:
        self._stop = [string for string in stop if string]
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The part of `text` (after what was held back) that is safe to emit. Once a stop string
        is complete, returns the text before it and sets `stopped`; the stop string is not emitted."""
        if self.stopped:
            return ""
        buffer = self._held + text
        cut = self._earliest_match(buffer)
        if cut is not None:
            self.stopped = True
            self._held = ""
            return buffer[:cut]
        keep = self._partial_match_length(buffer)
        self._held = buffer[len(buffer) - keep:] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """At the end of the output: the held-back text, which no stop string completed."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _earliest_match(self, buffer: str) -> int | None:
        """Where the stop string that completes first begins (of two completing at the same
        character, the longer). Completion order is what a stream sees, so the answer does not
        depend on how the text was cut into chunks."""
        matches = [(index + len(string), index) for string in self._stop if (index := buffer.find(string)) >= 0]
        return min(matches)[1] if matches else None

    def _partial_match_length(self, buffer: str) -> int:
        """Length of the longest end of `buffer` that begins some stop string."""
        longest = 0
        for string in self._stop:
            for length in range(min(len(string) - 1, len(buffer)), longest, -1):
                if string.startswith(buffer[-length:]):
                    longest = length
                    break
        return longest
