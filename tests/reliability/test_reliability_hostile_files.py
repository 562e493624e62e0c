"""Hostile and broken library files: a pickle carrying code never runs; truncated or garbage files are refused with a
clear message and left byte-identical, also when they turn bad under a running library."""

from __future__ import annotations

import builtins
import pickle
import random
import zipfile
from pathlib import Path

import pytest
import torch

from clip_app.library import LibraryCorruptError
from tests.support.library_helpers import image_bytes, open_library
from tests.support.reliability_helpers import folder_state


class Payload:
    """Unpickling this runs exec(): it writes a marker file (the proof that code ran)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('the payload ran')",))


def valid_library_dict(tmp_path: Path, colour_encoder) -> dict:
    """The dict of a real one-image library (so a payload can hide in an otherwise valid file)."""
    open_library(tmp_path / "donor", colour_encoder).add([(image_bytes("red"), "red.png")])
    return torch.load(tmp_path / "donor" / "features_library.pth", weights_only=True)


def write_hostile(kind: str, path: Path, marker: Path, valid: dict) -> None:
    """Write a library file that runs the payload when unpickled without restrictions."""
    if kind == "torch_zip":
        torch.save({**valid, "names": [Payload(marker)]}, path)  # hidden in a field of a valid library
    elif kind == "torch_legacy":
        torch.save({**valid, "extra": Payload(marker)}, path, _use_new_zipfile_serialization=False)
    elif kind == "plain_pickle":
        path.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    elif kind == "zip_member":  # a torch zip whose data.pkl was swapped for the payload
        torch.save(valid, path)
        with zipfile.ZipFile(path) as source:
            members = {info.filename: source.read(info) for info in source.infolist()}
        data_pkl = next(name for name in members if name.endswith("/data.pkl"))
        members[data_pkl] = pickle.dumps(Payload(marker), protocol=2)
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as target:
            for name, content in members.items():
                target.writestr(name, content)
    else:  # pragma: no cover
        raise ValueError(kind)


@pytest.mark.parametrize("kind", ["torch_zip", "torch_legacy", "plain_pickle", "zip_member"])
def test_a_library_file_carrying_code_is_refused_and_the_code_never_runs(tmp_path: Path, colour_encoder,
                                                                         kind: str) -> None:
    valid = valid_library_dict(tmp_path, colour_encoder)
    root = tmp_path / "victim"
    (root / "gallery").mkdir(parents=True)
    (root / "gallery" / "000001.png").write_bytes(image_bytes("red"))
    path = root / "features_library.pth"
    marker = tmp_path / "PWNED"
    write_hostile(kind, path, marker, valid)

    # the payload is real: unrestricted unpickling of a copy (with its own marker) runs it
    control_marker = tmp_path / "CONTROL"
    control = tmp_path / "control.pth"
    write_hostile(kind, control, control_marker, valid)
    if kind == "plain_pickle":
        pickle.loads(control.read_bytes())
    else:
        torch.load(control, weights_only=False)
    assert control_marker.read_text() == "the payload ran"

    before = folder_state(root)
    with pytest.raises(LibraryCorruptError) as info:
        open_library(root, colour_encoder)
    message = str(info.value)
    assert str(path) in message and "left untouched" in message
    assert "could run code when loaded, so it is never loaded" in message and "exec" in message
    assert "weights_only" not in message  # torch's own text advises loading it unsafely: never passed on
    assert not marker.exists()  # nothing ran
    assert folder_state(root) == before  # the file and the gallery are byte-identical, nothing was written


def _cuts(size: int, count: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return sorted({0, 1, 8, size // 2, size - 1, *(rng.randrange(1, size) for _ in range(count))})


def test_every_truncation_of_a_library_file_is_refused_and_kept(tmp_path: Path, colour_encoder) -> None:
    library = open_library(tmp_path, colour_encoder)
    library.add([(image_bytes(c), c) for c in ("red", "green", "blue")])
    path = tmp_path / "features_library.pth"
    whole = path.read_bytes()
    gallery = folder_state(tmp_path / "gallery")
    for cut in _cuts(len(whole), 25, seed=8):
        path.write_bytes(whole[:cut])
        with pytest.raises(LibraryCorruptError, match="left untouched") as info:
            open_library(tmp_path, colour_encoder)
        assert "truncated" in str(info.value) or "not a PyTorch file" in str(info.value), (cut, info.value)
        assert "weights_only" not in str(info.value)
        assert path.read_bytes() == whole[:cut], cut
        assert folder_state(tmp_path / "gallery") == gallery
    path.write_bytes(whole)
    assert len(open_library(tmp_path, colour_encoder)) == 3


@pytest.mark.parametrize("content", [
    b"\x00" * 4096,
    bytes(random.Random(1).randrange(256) for _ in range(5000)),
    b"PK\x03\x04" + b"not really a zip" * 20,
    b"<html><body>404 Not Found</body></html>",
    "json",
    "tensor",
    "wrong_types",
])
def test_garbage_library_files_are_refused_with_a_clear_message(tmp_path: Path, colour_encoder, content) -> None:
    path = tmp_path / "features_library.pth"
    (tmp_path / "gallery").mkdir()
    (tmp_path / "gallery" / "000001.png").write_bytes(image_bytes("red"))
    if content == "json":
        path.write_text('{"version": 1, "ids": [1]}')
    elif content == "tensor":
        torch.save(torch.zeros(3, 13), path)  # loads with weights_only, but is not a library
    elif content == "wrong_types":
        torch.save({"version": 1, "model": "color-test", "dim": 13, "ids": [1], "features": [[0.0]],
                    "files": ["000001.png"], "sha256": ["x"]}, path)
    else:
        path.write_bytes(content)
    before = folder_state(tmp_path)
    with pytest.raises(LibraryCorruptError) as info:
        open_library(tmp_path, colour_encoder)
    message = str(info.value)
    assert message.startswith(f"the feature library {path} ") and "left untouched" in message
    assert "restore a backup" in message and "weights_only" not in message and len(message) < 400
    assert folder_state(tmp_path) == before


def test_a_file_that_turns_bad_under_a_running_library_is_never_overwritten(tmp_path: Path, colour_encoder) -> None:
    library = open_library(tmp_path, colour_encoder)
    library.add([(image_bytes("red"), "red.png")])
    path = tmp_path / "features_library.pth"
    path.write_bytes(path.read_bytes()[:300])  # another program damaged it
    before = folder_state(tmp_path)
    query = colour_encoder.encode_texts(["red"])[0]
    for action in (lambda: library.add([(image_bytes("blue"), "blue.png")]), library.repair, library.rebuild,
                   lambda: library.remove([1]), lambda: library.search(query, 1)):
        with pytest.raises(LibraryCorruptError, match="left untouched"):
            action()
        assert folder_state(tmp_path) == before  # no gallery file added or removed, the damaged file kept


def _library_with_journal(root: Path, colour_encoder) -> Path:
    """A library whose last add went to the journal next to the main file; returns the journal's path."""
    library = open_library(root, colour_encoder)
    library.add([(image_bytes("red"), "red.png")])
    library.repair()  # writes a main file (with a generation), so the next add goes to the journal
    library.add([(image_bytes("blue"), "blue.png")])
    journal = root / "features_library.pth.journal"
    assert journal.exists() and len(open_library(root, colour_encoder)) == 2
    return journal


@pytest.mark.parametrize("kind", ["payload", "truncated", "garbage"])
def test_a_hostile_or_broken_journal_is_refused_and_kept(tmp_path: Path, colour_encoder, kind: str) -> None:
    root = tmp_path / "lib"
    journal = _library_with_journal(root, colour_encoder)
    raw = torch.load(journal, weights_only=True)
    marker = tmp_path / "PWNED"
    if kind == "payload":
        torch.save({**raw, "removed": Payload(marker)}, journal)
    elif kind == "truncated":
        journal.write_bytes(journal.read_bytes()[:200])
    else:
        journal.write_bytes(b"\x00garbage" * 50)
    before = folder_state(root)
    with pytest.raises(LibraryCorruptError, match="journal") as info:
        open_library(root, colour_encoder)
    assert "left untouched" in str(info.value)
    assert not marker.exists()
    assert folder_state(root) == before
