"""In-process nearest-neighbour search for the semantic response cache: each scope's sentence
embeddings as one normalized float32 matrix, searched by a brute-force dot product (a thousand
384-dimension vectors take about 0.1 ms), bounded in size and age."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

Payload = TypeVar("Payload")


@dataclass(frozen=True, slots=True)
class IndexEntry(Generic[Payload]):
    """One embedded text and what the cache keeps for it (the answer, or where to find it)."""

    text: str
    payload: Payload
    stored_at: float


@dataclass(frozen=True, slots=True)
class Match(Generic[Payload]):
    similarity: float
    entry: IndexEntry[Payload]


class VectorIndex(Generic[Payload]):
    """One scope's entries, oldest first; beyond max_entries the oldest go. A text stored again
    replaces its earlier entry."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.vectors: np.ndarray | None = None
        self.entries: list[IndexEntry[Payload]] = []

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def newest_at(self) -> float:
        return self.entries[-1].stored_at if self.entries else float("-inf")

    def add(self, vectors: np.ndarray, entries: list[IndexEntry[Payload]]) -> None:
        """Append entries (oldest first) with their normalized vectors, one row each."""
        texts = {entry.text for entry in entries}
        self._keep([entry.text not in texts for entry in self.entries])
        vectors = np.asarray(vectors, dtype=np.float32)
        self.vectors = vectors if self.vectors is None else np.concatenate([self.vectors, vectors])
        self.entries += entries
        excess = len(self.entries) - self.max_entries
        if excess > 0:
            self._keep([index >= excess for index in range(len(self.entries))])

    def drop_older_than(self, cutoff: float) -> None:
        if self.entries and self.entries[0].stored_at < cutoff:
            self._keep([entry.stored_at >= cutoff for entry in self.entries])

    def search(self, vector: np.ndarray, threshold: float) -> tuple[float | None, list[Match[Payload]]]:
        """The best similarity to `vector` (None when empty), and the entries at or above
        `threshold`, most similar first."""
        if not self.entries:
            return None, []
        similarities = self.vectors @ vector
        above = np.flatnonzero(similarities >= threshold)
        ranked = above[np.argsort(-similarities[above], kind="stable")]
        matches = [Match(float(similarities[index]), self.entries[index]) for index in ranked]
        return float(similarities.max()), matches

    def _keep(self, mask: list[bool]) -> None:
        if all(mask):
            return
        self.entries = [entry for entry, kept in zip(self.entries, mask) if kept]
        self.vectors = self.vectors[np.asarray(mask, dtype=bool)]


Index = TypeVar("Index", bound=VectorIndex)


class ScopedIndexes(Generic[Index]):
    """A VectorIndex per scope. Scopes whose newest entry has expired are forgotten, so scopes
    that stop being asked for (a tenant gone, a parameter never sent again) hold no memory."""

    def __init__(self, new_index: Callable[[], Index]) -> None:
        self.new_index = new_index
        # In the order of their newest entry: the expired ones are at the front.
        self.indexes: OrderedDict[str, Index] = OrderedDict()

    def __len__(self) -> int:
        return len(self.indexes)

    def get(self, scope: str, cutoff: float) -> Index | None:
        """The scope's index without entries stored before `cutoff`, or None."""
        self._forget_expired(cutoff)
        index = self.indexes.get(scope)
        if index is not None:
            index.drop_older_than(cutoff)
        return index

    def get_or_create(self, scope: str, cutoff: float) -> Index:
        index = self.get(scope, cutoff)
        if index is None:
            index = self.indexes[scope] = self.new_index()
        return index

    def added(self, scope: str) -> None:
        """Call after adding entries to a scope's index: it is now the most recently written."""
        self.indexes.move_to_end(scope)

    def _forget_expired(self, cutoff: float) -> None:
        while self.indexes:
            scope, index = next(iter(self.indexes.items()))
            if index.newest_at >= cutoff:
                return
            del self.indexes[scope]
