"""The feature library: gallery images and their features under shared integer IDs.

feature_library.FeatureLibrary composes the gallery folder (gallery.py), a Store of rows (store.py: the Store
protocol and the .pth + journal FileStore, whose format is fileformat.py and state.py) and an encoder; ingest.py
reads, hashes, decodes and encodes; maintenance.py checks, repairs and rebuilds; reports.py holds the results.
"""

from .errors import (
    LibraryBusyError,
    LibraryCorruptError,
    LibraryError,
    LibraryWriteError,
    ModelMismatchError,
    UnknownImageError,
)
from .feature_library import FeatureLibrary, private_paths
from .reports import (
    PROBLEM_KINDS,
    AddReport,
    AddResult,
    CheckReport,
    Entry,
    Problem,
    RebuildReport,
    RepairReport,
)
from .store import FileStore, Store

__all__ = [
    "PROBLEM_KINDS", "AddReport", "AddResult", "CheckReport", "Entry", "FeatureLibrary", "FileStore",
    "LibraryBusyError", "LibraryCorruptError", "LibraryError", "LibraryWriteError", "ModelMismatchError", "Problem",
    "RebuildReport", "RepairReport", "Store", "UnknownImageError", "private_paths",
]
