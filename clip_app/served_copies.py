"""The copies Gradio keeps of files it served or received (its cache folder, one sub-folder per content hash), so
that deleting an image can remove every copy that could still be downloaded: the upload, the gallery page copy, the
full-size copy of the selected-image panel and the thumbnail's copy.

Gradio names each copy ``<cache>/<sha256(hash seed + bytes)>/<file name>`` (processing_utils.hash_file, also used
for uploads), so the folders of a file's copies follow from its bytes, read before the file is deleted."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Callable, Iterable

log = logging.getLogger(__name__)


def copy_folders(files: Iterable[Path]) -> list[Path]:
    """The Gradio cache folders that hold copies of these files (whether or not any copy exists yet)."""
    from gradio import processing_utils
    from gradio.utils import get_upload_folder

    cache = Path(get_upload_folder())
    folders = []
    for path in files:
        try:
            if path.is_file():
                folders.append(cache / processing_utils.hash_file(path))
        except OSError as exc:
            log.warning("cannot read %s to find its served copies (%s)", path, exc)
    return folders


def remove_folders(folders: Iterable[Path]) -> int:
    """Delete these cache folders; returns how many existed."""
    count = 0
    for folder in folders:
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            count += 1
    return count


def forget_on_delete(entry: object, files: list[Path]) -> Callable[[], None]:
    """Called before an image is deleted with its files (image, thumbnail): returns what removes their copies once
    the delete succeeded."""
    folders = copy_folders(files)
    return lambda: log.info("removed %d served copies of %s", remove_folders(folders), getattr(entry, "file", entry))
