"""The feature library's typed errors."""

from __future__ import annotations

from pathlib import Path


class LibraryError(Exception):
    """Base of every feature library error."""


class LibraryCorruptError(LibraryError):
    """The library file cannot be read or is not a valid library; the file is left untouched."""


class ModelMismatchError(LibraryError):
    """The library was made by another model than the running one; its features cannot be mixed."""

    def __init__(self, library_model: str, running_model: str, library_file: Path | str | None = None,
                 library_model_name: str | None = None, running_model_name: str | None = None,
                 rebuild_command: str | None = None) -> None:
        self.library_model = library_model
        self.running_model = running_model
        where = f"the feature library {library_file}" if library_file else "the feature library"
        lib = _describe(library_model, library_model_name)
        run = _describe(running_model, running_model_name)
        if rebuild_command is None:
            model_flag = running_model if not running_model.startswith("sha256:") else "<path of the checkpoint>"
            rebuild_command = f"python -m clip_app.index --model {model_flag} rebuild"
        super().__init__(
            f"{where} was made with model {lib}, but the running model is {run}; features of two models are "
            f"never mixed. Re-encode the gallery with the running model: `{rebuild_command}` (the library file is "
            "replaced only when that succeeds), or start with --model set to the library's model.")


class UnknownImageError(LibraryError, KeyError):
    """An image ID that is not in the library."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown image"


class LibraryBusyError(LibraryError):
    """Another process held the library's lock for too long."""


class LibraryWriteError(LibraryError):
    """Saving the library or writing a gallery file failed; the previous library file is still valid."""


def _describe(identity: str, name: str | None) -> str:
    return f"{name!r} ({identity})" if name and name != identity else repr(identity)
