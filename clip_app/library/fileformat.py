"""The feature library file (features_library.pth): its in-memory state, validation, loading and atomic saving.

The file is a plain dict that loads with ``torch.load(path, weights_only=True)`` (it can never run code):

    version    int, FORMAT_VERSION
    model      str, the encoder identity that made the features (ClipEncoder.identity)
    model_name str, a readable model name for messages
    dim        int, feature width D
    ids        int64 [N], ascending, unique; image ID i is stored as gallery/<ID padded to 6 digits>.<ext>
    features   float16 [N, D], unit rows (float32 in memory)
    files      str, the N gallery file names (relative to the gallery folder), one per line, in row order
    sha256     uint8 [N, 32], the sha256 digest of each gallery file's bytes
    added      float64 [N], unix time each image was added
    sizes      int64 [N], bytes of each gallery file
    names      str, the N names the images had when they were added ("cat.jpg", "uploaded image"), one per line
    next_id    int, the next ID to give; IDs are never reused, so it only grows
    saved_at   float, unix time of the save

Text columns are single strings and hashes a byte tensor, not Python lists, because the weights_only unpickler
handles every list item in Python: three lists of 100,000 strings took about 2 s to load, these columns 0.05 s.
The reader also accepts lists of strings (and hex strings for sha256). In memory they stay compact (columns.py):
the text as one UTF-8 buffer with row offsets, the hashes as the uint8 [N, 32] tensor that was loaded.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path
from typing import BinaryIO, Callable

import torch

from .. import files
from .columns import HashColumn, TextColumn
from .errors import LibraryCorruptError, LibraryWriteError
from .state import FIRST_ID, FORMAT_VERSION, LibraryState, _ascending, clean_name, invariant_problem

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("version", "model", "dim", "ids", "features", "files", "sha256")

def load_raw(path: Path, what: str = "feature library", recovery: str | None = None) -> dict:
    """torch.load(weights_only=True) of a library file; LibraryCorruptError (file untouched, the message ending with
    `recovery`, by default RECOVERY) when it cannot be."""
    recovery = RECOVERY if recovery is None else recovery
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # unpickling refused, truncated zip, permission denied, not a torch file ...
        raise LibraryCorruptError(f"the {what} {path} cannot be read: {load_failure_reason(exc)}; it was left "
                                  f"untouched. {recovery}") from exc
    if not isinstance(raw, dict):
        raise LibraryCorruptError(f"the {what} {path} is not a valid library file (it holds a "
                                  f"{type(raw).__name__}, not a dict); it was left untouched. {recovery}")
    return raw


#: what to do about a damaged main file: without it, the next start indexes the gallery (the images keep their IDs)
RECOVERY = "Move it away and restart to index the gallery again, or restore a backup."
#: what to do about a damaged journal: the main file stays, so nothing is indexed again by itself; repair adopts the
#: images added since the last full save under their own IDs (never issued according to the main file)
JOURNAL_RECOVERY = ("Move the journal away, then run `python -m clip_app.index repair` (with the same --gallery, "
                    "--library and --model): the images added since the last full save are indexed again and keep "
                    "their IDs. Or restore a backup.")


def load_state(path: Path) -> LibraryState:
    """Read and validate a library file; LibraryCorruptError (naming the file and the reason) on any problem."""
    return parse_state(load_raw(path), path)


def parse_state(raw: dict, path: Path, what: str = "feature library", recovery: str | None = None) -> LibraryState:
    """state_from_dict, with any problem turned into LibraryCorruptError naming the file (see load_raw)."""
    try:
        return state_from_dict(raw)
    except (ValueError, TypeError, KeyError) as exc:
        raise LibraryCorruptError(f"the {what} {path} is not a valid library file ({exc}); it was left untouched. "
                                  f"{RECOVERY if recovery is None else recovery}") from exc


def load_failure_reason(exc: BaseException) -> str:
    """Why torch.load(weights_only=True) refused a file, in plain words (torch's own text advises loading the file
    with weights_only=False, which is exactly what must not be done with a file that carries code)."""
    text = str(exc)
    if "Unsupported global" in text:
        found = re.search(r"GLOBAL (\S+) was not an allowed global", text)
        what = f" ({found.group(1)})" if found else ""
        return (f"it holds Python objects{what}, not only tensors and plain data; such a file could run code when "
                "loaded, so it is never loaded")
    if isinstance(exc, EOFError) or "PytorchStreamReader" in text or "truncated" in text.lower():
        return "it is empty, truncated or damaged (an interrupted copy, or a full disk?)"
    if isinstance(exc, OSError):
        return f"{exc.strerror or type(exc).__name__}"
    if isinstance(exc, (pickle.UnpicklingError, KeyError, UnicodeDecodeError)) or "weights_only" in text:
        return "it is not a PyTorch file holding only tensors and plain data"
    return f"it is not a readable PyTorch file ({type(exc).__name__}: {_short(exc)})"


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def state_from_dict(raw: object) -> LibraryState:
    """Validate a loaded dict and build the state; ValueError/TypeError/KeyError describe what is wrong."""
    if not isinstance(raw, dict):
        raise TypeError(f"expected a dict, found {type(raw).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in raw]
    if missing:
        raise KeyError(f"missing keys {', '.join(missing)}")
    version = raw["version"]
    if not isinstance(version, int) or version < 1 or version > FORMAT_VERSION:
        raise ValueError(f"unsupported format version {version!r} (this program reads 1..{FORMAT_VERSION})")
    model, dim = raw["model"], raw["dim"]
    if not isinstance(model, str) or not model:
        raise TypeError("'model' must be a non-empty string")
    if not isinstance(dim, int) or dim <= 0:
        raise TypeError("'dim' must be a positive int")
    ids, features = raw["ids"], raw["features"]
    if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int64 or ids.dim() != 1:
        raise TypeError("'ids' must be an int64 tensor [N]")
    n = len(ids)
    if not isinstance(features, torch.Tensor) or not features.is_floating_point() or tuple(features.shape) != (n, dim):
        raise TypeError(f"'features' must be a float tensor [{n}, {dim}]")
    files = _text_column(raw, "files", n)
    sha256 = _hash_column(raw["sha256"], n)
    names = _text_column(raw, "names", n) if "names" in raw else files
    added = _tensor(raw, "added", n, torch.float64, fill=0.0)
    sizes = _tensor(raw, "sizes", n, torch.int64, fill=-1)
    if not _ascending(ids) and len(set(ids.tolist())) != n:
        raise ValueError("'ids' holds the same ID twice")
    if n and int(ids.min()) < 0:
        raise ValueError("'ids' holds a negative ID")
    next_id = raw.get("next_id", FIRST_ID)
    if not isinstance(next_id, int):
        raise TypeError("'next_id' must be an int")
    next_id = max(next_id, int(ids.max()) + 1 if n else FIRST_ID, FIRST_ID)
    bad = _first_unplain(files)
    if bad is not None:
        raise ValueError(f"gallery file name {bad!r} is not a plain file name")
    state = LibraryState.build(model, str(raw.get("model_name") or model), dim, ids=ids.clone(), features=features,
                               files=files, sha256=sha256, added=added, sizes=sizes, names=names, next_id=next_id)
    if not _ascending(state.ids):
        state = state.reordered(torch.argsort(state.ids))
    problem = invariant_problem(state)
    if problem:
        raise ValueError(problem)
    return state


def _text_column(raw: dict, key: str, n: int) -> TextColumn:
    """N strings stored as one newline-separated string (or as a list of strings), as a compact column."""
    value = raw[key]
    if isinstance(value, str):
        lines = value.count("\n") + 1 if n or value else 0
        if lines != n:
            raise ValueError(f"'{key}' holds {lines} entries for {n} rows")
        return TextColumn.from_joined(value, n)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        if len(value) != n:
            raise ValueError(f"'{key}' holds {len(value)} entries for {n} rows")
        if key == "names":  # a list could hold a line break, which the file's own form cannot
            value = [clean_name(v) if "\n" in v else v for v in value]
        return TextColumn.of(value)  # ValueError for a file name with a line break
    raise TypeError(f"'{key}' must be a string of {n} lines")


def _first_unplain(files: TextColumn) -> str | None:
    """The first gallery file name that is empty, holds a path separator or starts with a dot; None when all are
    plain (checked over the whole buffer at once: no str per row unless one is wrong)."""
    if not files.holds_any("/\\") and not (files.byte_lengths() == 0).any() and not (
            files.first_bytes() == ord(".")).any():
        return None
    for name in files:
        if not name or "/" in name or "\\" in name or name.startswith("."):
            return name
    return None  # pragma: no cover


def _hash_column(value: object, n: int) -> HashColumn:
    """sha256 digests stored as uint8 [N, 32] (kept as they are, no copy) or as a list of hex strings."""
    if isinstance(value, torch.Tensor):
        if value.dtype != torch.uint8 or tuple(value.shape) != (n, 32):
            raise TypeError(f"'sha256' must be a uint8 tensor [{n}, 32]")
        return HashColumn.of(value)
    if isinstance(value, (list, tuple)) and len(value) == n and all(
            isinstance(v, str) and len(v) == 64 for v in value):
        try:
            return HashColumn.of([v.lower() for v in value])
        except ValueError:
            pass
    raise TypeError(f"'sha256' must be a uint8 tensor [{n}, 32]")


def _tensor(raw: dict, key: str, n: int, dtype: torch.dtype, fill: float) -> torch.Tensor:
    value = raw.get(key)
    if value is None:
        return torch.full((n,), fill, dtype=dtype)
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != (n,):
        raise TypeError(f"'{key}' must be a tensor [{n}]")
    return value.to(dtype)


def save_state(state: LibraryState, path: Path, extra: dict | None = None) -> None:
    """Write the state's dict (plus `extra` keys) atomically; see write_atomic."""
    data = state.to_dict()
    data.update(extra or {})
    write_atomic(data, path)


def write_atomic(data: dict, path: Path) -> None:
    """torch.save the dict atomically: see replace_atomically."""
    replace_atomically(path, lambda handle: torch.save(data, handle))


def replace_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """files.replace_atomically, with any failure raised as LibraryWriteError (the previous file is unchanged)."""
    try:
        files.replace_atomically(path, write)
    except Exception as exc:
        raise LibraryWriteError(f"could not save {path} ({exc}); the previous file is unchanged") from exc
