"""The one home of durable writes and file hashes.

replace_atomically: temp file in the same folder, flush, fsync, os.replace, fsync the folder (readers see the old
file or the new one, never a part); create_new: the same without ever replacing an existing file; both remove their
temp file on any failure. sha256 of bytes and files; file signatures (inode, mtime, size) that tell a change.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

Signature = tuple[int, int, int]
PARTIAL_SUFFIX = ".partial"  # create_new's temp files: .<name>.<8 hex>.partial


def replace_atomically(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write `path` through `write(handle)` into `.<name>.<random>.tmp` beside it, fsync, os.replace, fsync the
    folder. On any failure the temp file is removed, the previous file is untouched and the error propagates."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)
    return path


def write_text_atomically(path: Path, text: str) -> Path:
    """A UTF-8 text file written through replace_atomically."""
    return replace_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


def write_bytes_atomically(path: Path, data: bytes) -> Path:
    """A bytes file written through replace_atomically."""
    return replace_atomically(path, lambda handle: handle.write(data))


def create_new(folder: Path, name: str, data: bytes) -> Path:
    """Write bytes to folder/name durably (temp `.<name>.<8 hex>.partial`, fsync, no-clobber rename);
    FileExistsError when folder/name exists. The temp file never outlives the call."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    tmp = folder / f".{name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}"
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        move_no_clobber(tmp, target)
    finally:
        if os.path.lexists(tmp):
            tmp.unlink()
    return target


def move_no_clobber(source: Path, target: Path) -> None:
    """Rename source to target without ever replacing an existing target (FileExistsError instead)."""
    try:
        os.link(source, target)  # atomic, fails when the target exists
    except FileExistsError:
        raise
    except OSError:  # file systems without hard links
        if os.path.lexists(target):
            raise FileExistsError(f"{target} exists") from None
        os.rename(source, target)
        return
    os.unlink(source)


def fsync_dir(folder: Path) -> None:
    """Make renames in a folder durable (best effort; not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def file_signature(path: Path) -> Signature | None:
    """(inode, mtime_ns, size) of a file, None when it does not exist: a change means another writer saved it."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # a path under a file cannot exist either
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def regular_file_signature(path: Path) -> Signature | None:
    """(inode, mtime_ns, size) of a regular file (following links), None for anything else or nothing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size) if stat.S_ISREG(st.st_mode) else None


def describe_os_error(exc: OSError) -> str:
    """An OSError in one line: what failed and on which file."""
    where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "") if exc.filename else ""
    reason = exc.strerror or str(exc)
    return f"{where}: {reason}" if where else reason
