"""The Store seam: the file store satisfies the protocol, and FeatureLibrary runs over any Store (here one that keeps
its rows in memory, as a database store would keep them elsewhere)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import pytest
import torch

from clip_app.library import FeatureLibrary, FileStore, LibraryBusyError, Store
from clip_app.library.state import LibraryState
from tests.support.library_helpers import image_bytes


class MemoryStore:
    """A Store that keeps its state in memory: no files, one writer at a time."""

    def __init__(self, empty: LibraryState) -> None:
        self.location = "memory"
        self.state, self.saves, self._saved = empty, [], False
        self._writer = threading.Lock()

    def exists(self) -> bool:
        return self._saved

    def current(self) -> LibraryState:
        return self.state

    @contextmanager
    def writing(self) -> Iterator[LibraryState]:
        if not self._writer.acquire(timeout=1):
            raise LibraryBusyError("busy")
        try:
            yield self.state
        finally:
            self._writer.release()

    def append(self, ids: Sequence[int], features: torch.Tensor, files: Sequence[str], sha256: Sequence[str],
               sizes: Sequence[int], names: Sequence[str], next_id: int) -> LibraryState:
        state = self.state.appended(list(ids), features, list(files), list(sha256), list(sizes), list(names))
        state.next_id = max(state.next_id, next_id)
        self.save(state)
        return state

    def remove(self, ids: Sequence[int]) -> LibraryState:
        state = self.state.without(list(ids))
        self.save(state)
        return state

    def save(self, state: LibraryState, compact: bool = False) -> None:
        self.state, self._saved = state, True
        self.saves.append(("compact" if compact else "save", len(state)))

    def search(self, state: LibraryState, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        scores = state.features @ query  # [N]: a plain exact scan, ties to the lower ID
        order = sorted(range(len(state)), key=lambda r: (-float(scores[r]), int(state.ids[r])))[:k]
        return scores[order], state.ids[order]

    def usage(self) -> dict:
        return {"file_size": 0, "journal_size": 0, "journal_file": None}

    def companion_path(self, name: str) -> Path | None:
        return None


def test_the_file_store_and_a_memory_store_satisfy_the_protocol(tmp_path: Path, colour_encoder) -> None:
    library = FeatureLibrary(tmp_path / "gallery", tmp_path / "lib.pth", colour_encoder)
    assert isinstance(library.store, FileStore) and isinstance(library.store, Store)
    empty = LibraryState.empty(colour_encoder.identity, colour_encoder.name, colour_encoder.dim)
    assert isinstance(MemoryStore(empty), Store)
    assert not isinstance(object(), Store)


def test_the_library_runs_over_another_store(tmp_path: Path, colour_encoder) -> None:
    empty = LibraryState.empty(colour_encoder.identity, colour_encoder.name, colour_encoder.dim)
    store = MemoryStore(empty)
    library = FeatureLibrary(tmp_path / "gallery", tmp_path / "lib.pth", colour_encoder, store=store)
    report = library.add([(image_bytes("red"), "r.png"), (image_bytes("blue"), "b.png"), (image_bytes("red"), "x")])
    assert [r.status for r in report.results] == ["added", "added", "duplicate"]
    assert store.saves == [("save", 2)] and not (tmp_path / "lib.pth").exists()  # one save, nothing on disk
    red = report.results[0]
    assert torch.equal(red.feature, store.state.row_feature(red.id)) and torch.equal(report.results[2].feature,
                                                                                    red.feature)
    (entry, _), = library.search(colour_encoder.encode_texts(["blue"])[0], 1)
    assert entry.id == report.results[1].id and entry.path.is_file()
    assert library.remove([red.id]) == [red.id] and len(library) == 1 and store.saves[-1] == ("save", 1)
    assert library.check().ok and library.stats()["file_size"] == 0
    with store.writing():
        with pytest.raises(LibraryBusyError):  # one writer: a second write section waits, then gives up
            library.add([(image_bytes("green"), "g.png")])
