"""The index manager: `python -m clip_app.index [settings flags] <add|remove|list|stats|check|repair|rebuild|export|
labels|classify|search|tag> ...` (labels: index_labels.py; classify, search and tag: index_tags.py).

Exit status: 0 done; 1 the command could not do what was asked (nothing could be added, an unknown ID, set or tag,
bad labels or a bad threshold, `check` found a disagreement); 2 an error that stops everything (model cannot load,
library of another model, corrupt or locked library file, a failed save).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import stat
import sys
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from tqdm import tqdm

from .classify import LabelError
from .config import Settings, add_settings_arguments
from .encoders import ClipEncoder, ModelLoadError, model_identity
from .files import describe_os_error
from .images import IMAGE_EXTENSIONS, special_kind
from .index_labels import LabelsCommandError, add_labels_parser, cmd_labels, store_of
from .index_tags import add_parsers, library_tags, list_tagged, sync_tags, tag_problems
from .label_sets import LabelSetError
from .library import AddReport, AddResult, FeatureLibrary, LibraryError, UnknownImageError
from .library.tags import UnknownTagError
from .service import format_size
from .thumbnails import Thumbnails

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger("clip_app.index")

ADD_CHUNK = 64  # files per add() call: each call is saved once (an interrupted big add keeps what it did) and
# holds its new files' bytes until they are written, so memory stays bounded


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: shared settings flags, library options, then one sub-command."""
    parser = argparse.ArgumentParser(
        prog="python -m clip_app.index",
        description="Manage the image library: gallery/ + features_library.pth, joined by integer image IDs.")
    add_settings_arguments(parser)
    parser.add_argument("--near-duplicate-threshold", type=float, default=0.97, metavar="COS",
                        help="cosine similarity from which a new image is reported as a near-duplicate (default 0.97)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = commands.add_parser("add", help="add image files and folders (recursive)")
    add.add_argument("paths", nargs="+", metavar="PATH", help="image files, or folders searched recursively for "
                     f"files ending in {', '.join(sorted(IMAGE_EXTENSIONS))}")
    add.add_argument("--ray", nargs="?", const="auto", default=None, metavar="auto|ADDRESS",
                     help="decode and encode on a Ray cluster (auto: the cluster this machine belongs to, or a new "
                     "local one; or the head's ADDRESS host:port / ray://host:10001); this process writes the library")
    add.add_argument("--ray-actors", type=int, default=2, metavar="N", help="encoder actors (default 2)")
    add.add_argument("--ray-gpus-per-actor", type=float, default=0.0, metavar="G",
                     help="GPUs each actor reserves (default 0: CPU actors; 1 for one GPU each)")
    remove = commands.add_parser("remove", help="remove images by ID (row first, then the file)")
    remove.add_argument("ids", nargs="+", type=int, metavar="ID")
    for name, text in (("list", "list the images: ID, file, sha256"),
                       ("stats", "count, model, feature width, file size")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--json", action="store_true", help="print JSON")
        if name == "list":
            sub.add_argument("--tag", metavar="LABEL", help="only the images tagged LABEL (see the tag command)")
            sub.add_argument("--set", metavar="NAME", help="the label set of --tag (default: any tagged set)")
    check = commands.add_parser("check", help="list every disagreement between gallery, library file and model "
                                "(exit status 1 when there is any)")
    check.add_argument("--quick", action="store_true", help="do not read the image files to compare their hashes")
    check.add_argument("--json", action="store_true", help="print JSON")
    commands.add_parser("repair", help="fix what check finds (index files without rows, drop rows without files, "
                        "re-encode changed files, set aside what is not an image)")
    commands.add_parser("rebuild", help="re-encode every gallery image with the running model into a new library "
                        "file, swapped in atomically")
    add_labels_parser(commands)
    COMMANDS.update(add_parsers(commands))
    export = commands.add_parser("export", help="copy the library (IDs, features, names, times, label sets, tags) "
                                 "into a new library file or PostgreSQL table, verified by counts and checksums")
    export.add_argument("--to", required=True, metavar="URL_OR_FILE",
                        help="a new library file, or postgresql://USER@HOST:PORT/DB[?table=NAME]")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # noise from the clip package
    warnings.filterwarnings("ignore", message=r"`torch.jit.load` is deprecated")  # clip.load tries TorchScript first
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_args(args)
        encoder = LazyEncoder(settings, args.batch_size)
        return COMMANDS[args.command](args, settings, encoder)  # type: ignore[arg-type]
    except (UnknownImageError, UnknownTagError, LabelSetError, LabelError, LabelsCommandError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ModelLoadError, LibraryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a folder that cannot be read or written, a file that cannot be moved ...
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: what was saved before stays valid", file=sys.stderr)
        return 130


def _loads_model(name: str, doc: str) -> property:
    """A LazyEncoder property of the Encoder protocol that the loaded model answers (loading it first)."""
    return property(lambda self: getattr(self.load(), name), doc=f"{doc} (loads the model)")


class LazyEncoder:
    """The --model as the library sees it: its identity and name are known without loading any weights (a model
    name, or a checkpoint's sha256); the model itself is loaded on first use of anything else (encoding, its feature
    width). So list, stats, check and remove of an existing library work offline without the weights; add, rebuild
    and repair load the model when they have images to encode."""

    def __init__(self, settings: Settings, batch_size: int) -> None:
        self._settings, self._batch_size = settings, batch_size
        self._encoder: ClipEncoder | None = None
        self.identity, self.name = model_identity(settings.model)  # ModelLoadError: unknown name, missing file
        path = Path(settings.model).expanduser()
        self.source = str(path.absolute()) if path.is_file() else settings.model  # as ClipEncoder.source
        self.model_dir = str(settings.model_dir) if settings.model_dir else None

    @property
    def loaded(self) -> bool:
        """True once the weights are loaded."""
        return self._encoder is not None

    def load(self) -> ClipEncoder:
        """The loaded encoder (ModelLoadError when the weights cannot be loaded)."""
        if self._encoder is None:
            log.info("loading CLIP %s", self._settings.model)
            self._encoder = ClipEncoder(self._settings.model, batch_size=self._batch_size,
                                        **self._settings.encoder_options())  # type: ignore[arg-type]
        return self._encoder

    # ---- the Encoder protocol: everything past identity, name, source and model_dir loads the weights ----
    dim = _loads_model("dim", "feature width D")
    device = _loads_model("device", "where the model runs")
    input_resolution = _loads_model("input_resolution", "the image tower's input size in pixels")
    decode_min_side = _loads_model("decode_min_side", "the shortest side images may be decoded at")
    batch_size = _loads_model("batch_size", "images per forward pass")
    preprocess = _loads_model("preprocess", "PIL image -> [3, H, W]")
    family = _loads_model("family", "the model family (its prompt templates)")

    def encode_images(self, images: Sequence[Image.Image], batch_size: int | None = None) -> torch.Tensor:
        """PIL images -> float32 unit rows [N, D] (loads the model)."""
        return self.load().encode_images(images, batch_size)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed pixels [N, 3, H, W] -> float32 unit rows [N, D] (loads the model)."""
        return self.load().encode_pixels(pixels)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings -> float32 unit rows [N, D] (loads the model)."""
        return self.load().encode_texts(texts)


def open_library(args: argparse.Namespace, settings: Settings, encoder: ClipEncoder,
                 strict: bool = True) -> FeatureLibrary:
    """The library of these settings; strict=False skips the model check (list, stats, check, remove, rebuild)."""
    library = FeatureLibrary(settings.gallery_dir, settings.library_file, encoder, check_model=strict,
                             near_duplicate_threshold=args.near_duplicate_threshold, batch_size=args.batch_size)
    if library.first_run_report is not None:
        print(f"first run: indexed {len(library.first_run_report.indexed)} gallery images into "
              f"{settings.library_file}", file=sys.stderr)
    return library


@contextmanager
def progress_bar(desc: str, unit: str = "img") -> Iterator[Callable[[int, int], None]]:
    """A tqdm bar driven by (done, total) callbacks."""
    bar = tqdm(total=0, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def collect_paths(paths: Sequence[str], max_file_size: int | None = None) -> tuple[list[Path], list[AddResult]]:
    """Files to add (folders searched recursively for image extensions, sorted) and failures for what is skipped:
    missing paths, entries that are not regular files (FIFOs, devices, sockets: never opened) and files over
    max_file_size bytes."""
    files: list[Path] = []
    failures: list[AddResult] = []

    def skip(label: str, reason: str) -> None:
        failures.append(AddResult(name=label, status="failed", id=None, error=f"{label}: {reason}"))

    def consider(path: Path, label: str) -> None:
        try:
            info = path.stat()
        except OSError as exc:
            skip(label, f"cannot be read ({exc.strerror or exc})")
            return
        if not stat.S_ISREG(info.st_mode):
            skip(label, f"skipped: {special_kind(info.st_mode)}, not a regular file")
        elif max_file_size is not None and info.st_size > max_file_size:
            skip(label, f"skipped: {format_size(info.st_size)} is over the size limit of {format_size(max_file_size)} "
                 "(--max-file-size / CLIP_APP_MAX_FILE_SIZE)")
        else:
            files.append(path)

    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                skip(raw, "no image files in this folder")
            for file in found:
                consider(file, str(file))
        elif os.path.lexists(path):
            consider(path, raw)
        else:
            skip(raw, "no such file or folder")
    return files, failures


def cmd_add(args: argparse.Namespace, settings: Settings, encoder: ClipEncoder) -> int:
    files, failures = collect_paths(args.paths, settings.max_file_size)
    library = open_library(args, settings, encoder)
    results: list[AddResult] = []
    if args.ray is not None:
        from .library.ray_ingest import RayOptions, ray_add

        options = RayOptions(address=args.ray, actors=args.ray_actors, gpus_per_actor=args.ray_gpus_per_actor,
                             batch_size=args.batch_size)
        with progress_bar("adding (ray)") as update:
            ray_report = ray_add(library, settings, files, options, progress=update)
        results = ray_report.results
        print(ray_report.ray.summary(), file=sys.stderr)  # type: ignore[attr-defined]
    else:
        with progress_bar("adding") as update:
            for start in range(0, len(files), ADD_CHUNK):
                chunk = files[start:start + ADD_CHUNK]
                report = library.add(chunk, progress=lambda done, _total, s=start: update(s + done, len(files)))
                results.extend(report.results)
    if any(r.status == "added" for r in results):
        sync_tags(settings, library, encoder)  # images added later are tagged for every tagged set
    report = AddReport(results=results + failures)
    print(report.summary())
    for result in report.duplicates:
        print(f"duplicate: {result.name} is already ID {result.id}")
    for result in report.near_duplicates:
        print(f"near-duplicate: {result.name} (new ID {result.id}) looks like ID {result.near_duplicate_of} "
              f"(cosine {result.similarity:.3f})")
    for result in report.failed:
        print(f"failed: {result.error}")
    processed = len(report.added) + len(report.duplicates)
    return 0 if processed else 1


def cmd_remove(args: argparse.Namespace, settings: Settings, encoder: ClipEncoder) -> int:
    library = open_library(args, settings, encoder, strict=False)
    hashes = {}
    for image_id in args.ids:
        try:
            hashes[image_id] = library.get(image_id).sha256
        except UnknownImageError:
            pass  # remove() names every unknown ID and removes nothing
    removed = library.remove(args.ids)
    thumbnails = Thumbnails(settings.gallery_dir)
    for image_id in removed:  # the thumbnails go with their images
        thumbnails.remove(hashes.get(image_id, ""))
    store_of(settings).forget_images(removed)  # label-set examples disappear with their images
    sync_tags(settings, library, encoder)  # a deleted image leaves no tag
    print(f"removed {len(removed)} image{'' if len(removed) == 1 else 's'}: {', '.join(map(str, removed))}")
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings, encoder: ClipEncoder) -> int:
    if args.set and not args.tag:
        raise LabelSetError("--set goes with --tag LABEL")
    entries = list_tagged(args, settings, encoder) if args.tag else open_library(args, settings, encoder, strict=False)
    rows = [{"id": e.id, "file": e.file, "sha256": e.sha256, "size": e.size, "added": e.added,
             "added_utc": _iso(e.added), "name": e.name} for e in entries]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for row in rows:
        print(f"{row['id']}\t{row['file']}\t{row['sha256']}")
    return 0


def cmd_stats(args: argparse.Namespace, settings: Settings, encoder: ClipEncoder) -> int:
    stats = open_library(args, settings, encoder, strict=False).stats()
    stats["running_model"] = encoder.identity
    stats["text_model"] = settings.text_model  # None: CLIP's own text tower only (the library does not depend on it)
    stats["text_routing"] = settings.text_routing if settings.text_model else None
    if args.json:
        print(json.dumps(stats, indent=1))
        return 0
    per_image = stats["file_size"] / stats["count"] if stats["count"] else 0
    print(f"images:        {stats['count']}")
    print(f"model:         {stats['model_name']} ({stats['model']})"
          + ("" if stats["model"] == encoder.identity else f"  [running model: {encoder.identity}: run rebuild]"))
    print(f"feature width: {stats['dim']}")
    print(f"text model:    {settings.text_model} ({settings.text_routing} routing)" if settings.text_model
          else "text model:    CLIP's own text tower (English)")
    print(f"library file:  {stats['library_file']} ({stats['file_size']:,} bytes, {per_image:,.0f} per image)")
    print(f"gallery:       {stats['gallery_dir']} ({stats['gallery_bytes']:,} bytes)")
    print(f"next ID:       {stats['next_id']}")
    return 0


def cmd_check(args: argparse.Namespace, settings: Settings, encoder: ClipEncoder) -> int:
    library = open_library(args, settings, encoder, strict=False)
    stats = library.stats()
    if not args.quick and stats["count"] and stats["model"] == encoder.identity and hasattr(encoder, "load"):
        try:  # the feature width of the model is known once it is loaded: then check reports a wrong width
            encoder.load()  # type: ignore[attr-defined]
        except ModelLoadError as exc:
            print(f"note: the feature width was not checked: {exc}", file=sys.stderr)
    with progress_bar("checking") as update:
        report = library.check(hashes=not args.quick, progress=update)
    report.problems.extend(tag_problems(settings, library))
    if args.json:
        print(json.dumps({"ok": report.ok, "problems": [p.__dict__ for p in report.problems]}, indent=1))
    else:
        for problem in report.problems:
            print(problem)
        if report.by_kind("model_mismatch"):  # repair refuses another model's library: rebuild fixes it all
            print(report.summary() + f"; run `{library.index_command('rebuild')}` to re-encode the gallery with the "
                  "running model")
        else:
            print(report.summary() + ("" if report.ok else f"; run `{library.index_command('repair')}` to fix"))
    return 0 if report.ok else 1


def cmd_repair(args: argparse.Namespace, settings: Settings, encoder: ClipEncoder) -> int:
    library = open_library(args, settings, encoder)
    with progress_bar("reading files", unit="file") as update:
        report = library.repair(progress=update)
    report.actions.extend(library_tags(settings, library, encoder).repair(library, encoder))
    pruned = Thumbnails(settings.gallery_dir).prune(e.sha256 for e in library)
    if pruned:
        report.actions.append(f"removed {len(pruned)} thumbnails of images no longer in the library")
    for action in report.actions:
        print(action)
    left = library.check(hashes=False)
    left.problems.extend(tag_problems(settings, library))
    print(f"{len(report.actions)} repair action(s)" if report.actions else "nothing to repair")
    if not left.ok:
        for problem in left.problems:
            print(f"left: {problem}")
        return 1
    return 0


def cmd_rebuild(args: argparse.Namespace, settings: Settings, encoder: ClipEncoder) -> int:
    library = open_library(args, settings, encoder, strict=False)
    with progress_bar("re-encoding") as update:
        report = library.rebuild(progress=update)
    for action in report.actions:
        print(action)
    sync_tags(settings, library, encoder)  # tags of another model are recomputed
    print(f"rebuilt {settings.library_file} with {encoder.name}: {report.count} images "
          f"(previous model {report.previous_model}, now {report.model})")
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings, encoder: ClipEncoder) -> int:
    from .library.export import export_library, read_documents

    library = open_library(args, settings, encoder, strict=False)
    report = export_library(library.store.current(), read_documents(library), args.to)
    print(f"exported {report.rows} images and {len(report.documents)} companion document(s) "
          f"({', '.join(report.documents) or 'none'}) to {report.target} in {report.seconds:.1f} s; verified: "
          f"{report.rows} rows, checksum {report.checksum[:16]}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings, ClipEncoder], int]] = {
    "add": cmd_add, "remove": cmd_remove, "list": cmd_list, "stats": cmd_stats, "check": cmd_check,
    "repair": cmd_repair, "rebuild": cmd_rebuild, "export": cmd_export,
    "labels": lambda args, settings, encoder: cmd_labels(args, settings, encoder, open_library),
}


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="seconds")


if __name__ == "__main__":
    sys.exit(main())
