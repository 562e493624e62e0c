"""Copy a library between stores (`python -m clip_app.index export --to URL_OR_FILE`): file -> PostgreSQL,
PostgreSQL -> file, or file -> file; IDs, features, files, hashes, sizes, names, times added, the next ID and the
companion documents (label sets as JSON, tags as the bytes of a .tags file). The copy is read back and verified by
counts and checksums.

The target must be new (no file, or no rows in the table): export never merges into or overwrites a library.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import replace_atomically
from .errors import LibraryError
from .pg_companions import PgCompanions
from .pg_sql import PgTables, document_json, is_database_url
from .state import LibraryState
from .store import LABEL_SETS_NAME, TAGS_SUFFIX, load_library, save_library

log = logging.getLogger(__name__)

DOCUMENT_FILES = {"label_sets": LABEL_SETS_NAME}  # companion JSON document -> its file beside a library file
BLOB_SUFFIXES = {"tags": TAGS_SUFFIX}  # binary companion (bytes) -> the suffix of its file: features_library.pth.tags


class ExportError(LibraryError):
    """The target is not new, or the copy did not verify (the message says which)."""


@dataclass
class ExportReport:
    """What export copied and how long it took."""

    rows: int
    documents: list[str]
    checksum: str
    target: str
    seconds: float
    copy_seconds: float
    verify_seconds: float


def state_checksum(state: LibraryState) -> str:
    """sha256 over every column (IDs, float16 rows, files, hashes, sizes, names, times added), the model and next ID."""
    digest = hashlib.sha256()
    for tensor in (state.ids, state.features16, state.sizes, state.added):
        digest.update(tensor.contiguous().numpy().tobytes())
    for column in (state.files, state.sha256, state.names):
        digest.update(column.joined().encode() + b"\0")
    digest.update(f"{state.model}\0{state.dim}\0{state.next_id}".encode())
    return digest.hexdigest()


def read_documents(library: Any) -> dict[str, Any]:
    """The companion documents of a FeatureLibrary: label sets (JSON) and tags (bytes), from its store's tables, or
    from the files beside its file."""
    if hasattr(library.store, "documents"):
        return library.store.documents()
    return _file_documents(Path(library.library_file))


def _file_documents(path: Path) -> dict[str, Any]:
    """The companions beside a library file: JSON documents parsed, binary ones as bytes."""
    found: dict[str, Any] = {}
    for name, file_name in DOCUMENT_FILES.items():
        if path.with_name(file_name).is_file():
            found[name] = json.loads(path.with_name(file_name).read_text(encoding="utf-8"))
    for name, suffix in BLOB_SUFFIXES.items():
        if path.with_name(path.name + suffix).is_file():
            found[name] = path.with_name(path.name + suffix).read_bytes()
    return found


def _fingerprint(body: Any) -> str:
    """What export compares: canonical JSON of a document, sha256 of a binary one."""
    return hashlib.sha256(body).hexdigest() if isinstance(body, bytes) else document_json(body)


def export_library(state: LibraryState, documents: dict[str, Any], target: Path | str,
                   build_index: bool = True) -> ExportReport:
    """Write state and documents as a new library at target (file path or postgresql:// URL), read it back and
    compare counts and checksums; ExportError when the target exists or differs."""
    started = time.perf_counter()
    checksum = state_checksum(state)
    if is_database_url(target):
        store = PgTables(str(target))
        meta = store.meta()
        if meta is not None and store.count() > 0:
            raise ExportError(f"the target library {store.location.shown} already holds {store.count()} rows; "
                              "export only writes a new library (use another ?table=NAME)")
        if meta is None:
            store.create(state.model, state.model_name, state.dim, state.next_id)
        companions = PgCompanions(store)
        with store.writing():
            store.apply(model=state.model, model_name=state.model_name, dim=state.dim, next_id=state.next_id,
                        rows=state, replace_all=True, index=False)
            for name, body in documents.items():
                if isinstance(body, bytes):
                    companions.put_blob(name, body)
                else:
                    companions.put_document(name, body)
        copied = time.perf_counter()
        _, copy, _ = store.load()
        copy_documents = {**companions.documents(), **companions.blobs_all()}
        shown = store.location.shown
    else:
        path = Path(target).expanduser().absolute()
        if path.exists():
            raise ExportError(f"the target library file {path} exists; export only writes a new library")
        save_library(state, path, None, compact=True)
        for name, body in documents.items():
            if name in DOCUMENT_FILES:
                payload = json.dumps(body, ensure_ascii=False, indent=1).encode("utf-8")
                replace_atomically(path.with_name(DOCUMENT_FILES[name]), lambda h, p=payload: h.write(p))
            elif name in BLOB_SUFFIXES and isinstance(body, bytes):
                replace_atomically(path.with_name(path.name + BLOB_SUFFIXES[name]), lambda h, b=body: h.write(b))
            else:
                log.warning("export to a file keeps only %s; the document %r stays behind",
                            ", ".join([*DOCUMENT_FILES, *BLOB_SUFFIXES]), name)
        copied = time.perf_counter()
        copy, _ = load_library(path)
        copy_documents = _file_documents(path)
        store, shown = None, str(path)
    got = state_checksum(copy)
    if len(copy) != len(state) or got != checksum:
        raise ExportError(f"the copy at {shown} does not verify: {len(copy)} rows (expected {len(state)}), checksum "
                          f"{got[:16]} (expected {checksum[:16]})")
    expected_docs = {k: _fingerprint(v) for k, v in documents.items()
                     if store is not None or k in DOCUMENT_FILES or (k in BLOB_SUFFIXES and isinstance(v, bytes))}
    if {k: _fingerprint(v) for k, v in copy_documents.items()} != expected_docs:
        raise ExportError(f"the companion documents at {shown} do not verify")
    verified = time.perf_counter()
    if store is not None and build_index:
        store.ensure_index()
    return ExportReport(rows=len(state), documents=sorted(expected_docs), checksum=checksum, target=shown,
                        seconds=time.perf_counter() - started, copy_seconds=copied - started,
                        verify_seconds=verified - copied)


__all__ = ["ExportError", "ExportReport", "export_library", "read_documents", "state_checksum"]
