"""The gallery folder: file names by ID, scanning for what does not belong, and careful (no-clobber) file writes.

Image ``ID`` is stored as ``<ID zero-padded to 6 digits><ext>`` (``000042.jpg``); the extension comes from the real
format of the bytes (images.image_extension). A name is *ID-shaped* only in that canonical form.

Names the library ignores in the gallery folder (never reported, never moved): hidden names (starting with '.',
which covers the library's own temp files and the `.quarantine/` folder), ``README`` / ``LICENSE`` / ``LICENCE`` /
``COPYING`` / ``CREDITS`` with no extension or ``.md``, ``.txt``, ``.rst``, ``Thumbs.db`` and ``desktop.ini`` (exact
names, case-insensitive: ``license_plate.jpg`` is an image like any other), and the library file, its lock, journal
and label sets file when the library file lives inside the gallery folder (store.companion_files).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..files import fsync_dir
from ..images import FORMAT_EXTENSIONS, IMAGE_EXTENSIONS

ID_DIGITS = 6
QUARANTINE_DIR = ".quarantine"
_DOC_STEMS = ("readme", "license", "licence", "copying", "credits")
_DOC_SUFFIXES = ("", ".md", ".txt", ".rst")
#: exact names (compared in lower case) of the files a gallery may carry beside its images
IGNORED_NAMES = frozenset({stem + suffix for stem in _DOC_STEMS for suffix in _DOC_SUFFIXES}
                          | {"thumbs.db", "desktop.ini"})
#: every extension a gallery file of an ID may carry (checked before an ID is given, so no file is overwritten)
KNOWN_EXTENSIONS = tuple(sorted(set(FORMAT_EXTENSIONS.values()) | set(IMAGE_EXTENSIONS) | {".img"}))
_ID_NAME = re.compile(r"^(\d{%d,})(\.[A-Za-z0-9]{1,8})$" % ID_DIGITS)


def id_file_name(image_id: int, ext: str) -> str:
    """The gallery file name of an ID: id_file_name(42, '.jpg') == '000042.jpg'."""
    return f"{int(image_id):0{ID_DIGITS}d}{ext}"


def parse_id_name(name: str) -> int | None:
    """The ID of a canonical ID-shaped file name ('000042.jpg' -> 42), else None ('42.jpg', 'cat.jpg')."""
    match = _ID_NAME.match(name)
    if not match:
        return None
    digits = match.group(1)
    image_id = int(digits)
    return image_id if f"{image_id:0{ID_DIGITS}d}" == digits else None


def is_ignored(name: str, extra: Iterable[str] = ()) -> bool:
    """True for names the library never reports or touches: hidden names, the exact IGNORED_NAMES (README.md,
    LICENSE, CREDITS.md, ...) and `extra`. An image file name is never ignored by its prefix."""
    return name.startswith(".") or name.lower() in IGNORED_NAMES or name in set(extra)


def has_image_extension(name: str) -> bool:
    """True when the name ends in one of images.IMAGE_EXTENSIONS (case-insensitive)."""
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


@dataclass
class GalleryScan:
    """What the gallery folder holds: ID-shaped files by ID, and everything else that is not ignored."""

    id_files: dict[int, list[str]] = field(default_factory=dict)
    foreign: list[str] = field(default_factory=list)  # files and folders, sorted by name


def scan_gallery(folder: Path, extra_ignored: Iterable[str] = ()) -> GalleryScan:
    """List the gallery folder (not recursive); a missing folder is an empty gallery."""
    scan = GalleryScan()
    extra = set(extra_ignored)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except FileNotFoundError:
        return scan
    for entry in entries:
        if is_ignored(entry.name, extra):
            continue
        image_id = parse_id_name(entry.name)
        if image_id is not None and entry.is_file():
            scan.id_files.setdefault(image_id, []).append(entry.name)
        else:
            scan.foreign.append(entry.name)
    return scan


#: the rule for symbolic links in the gallery (repair and first-run indexing never follow one)
LINK_RULE = ("the gallery keeps its own copies of the images, so a link is never indexed: add the photo with "
             "`python -m clip_app.index add PATH` (it is copied in)")


def not_a_file_reason(folder: Path, name: str) -> str | None:
    """Why folder/name is not a regular file of the gallery ('a folder', 'a symbolic link to a file outside the
    gallery', ...), or None when it is one (or does not exist)."""
    path = folder / name
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISLNK(info.st_mode):
        target = os.path.realpath(path)
        inside = Path(target).is_relative_to(Path(folder).resolve())
        return f"a symbolic link to {'another file in' if inside else 'a file outside'} the gallery ({LINK_RULE})"
    if stat.S_ISDIR(info.st_mode):
        return "a folder, not an image file"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a FIFO, device or socket)"
    return None


def id_taken_on_disk(folder: Path, image_id: int) -> bool:
    """True when any file named after this ID exists (whatever its extension)."""
    return any(os.path.lexists(folder / id_file_name(image_id, ext)) for ext in KNOWN_EXTENSIONS)


def quarantine(folder: Path, name: str) -> str:
    """Move folder/name into folder/.quarantine/ (never deleting it); return its new path relative to folder."""
    qdir = folder / QUARANTINE_DIR
    qdir.mkdir(exist_ok=True)
    target = qdir / name
    stem, suffix = os.path.splitext(name)
    count = 1
    while os.path.lexists(target):
        target = qdir / f"{stem}.{count}{suffix}"
        count += 1
    os.rename(folder / name, target)
    fsync_dir(folder)
    return f"{QUARANTINE_DIR}/{target.name}"
