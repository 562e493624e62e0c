"""clip_app/files.py: the one home of durable writes; temp files never outlive a failed write."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from clip_app import files


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_replace_atomically_writes_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.bin"
    files.write_bytes_atomically(target, b"one")
    files.write_text_atomically(target, "two ü")
    assert target.read_text(encoding="utf-8") == "two ü" and leftovers(target.parent) == []


def test_a_failing_writer_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def broken(handle) -> None:
        handle.write(b"half")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        files.replace_atomically(target, broken)
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_a_failing_rename_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", full)
    with pytest.raises(OSError, match="No space"):
        files.write_text_atomically(tmp_path / "a.txt", "x")
    assert list(tmp_path.iterdir()) == []


def test_create_new_never_replaces_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files.create_new(tmp_path, "000001.png", b"first")
    with pytest.raises(FileExistsError):
        files.create_new(tmp_path, "000001.png", b"second")
    assert (tmp_path / "000001.png").read_bytes() == b"first" and leftovers(tmp_path) == []

    def no_link(*args, **kwargs):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(files.os, "fsync", no_link)
    with pytest.raises(OSError, match="I/O error"):
        files.create_new(tmp_path, "000002.png", b"x")
    assert not (tmp_path / "000002.png").exists() and leftovers(tmp_path) == []


def test_hashes_and_signatures(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc" * 1000)
    expected = hashlib.sha256(b"abc" * 1000).hexdigest()
    assert files.sha256_bytes(b"abc" * 1000) == expected == files.sha256_file(path, chunk=7)
    signature = files.file_signature(path)
    assert signature is not None and signature[2] == 3000 and files.regular_file_signature(path) == signature
    assert files.file_signature(tmp_path / "missing") is None and files.file_signature(path / "below") is None
    assert files.regular_file_signature(tmp_path) is None  # a folder is not a regular file


def test_os_replace_lives_in_one_product_module() -> None:
    package = Path(files.__file__).parent
    users = sorted(str(p.relative_to(package)) for p in package.rglob("*.py") if "os.replace(" in p.read_text())
    assert users == ["files.py"]


def test_describe_os_error_names_the_file() -> None:
    assert files.describe_os_error(OSError(13, "Permission denied", "/x/y")) == "/x/y: Permission denied"
    assert files.describe_os_error(OSError("plain")) == "plain"
