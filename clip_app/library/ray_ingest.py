"""Bulk indexing on a Ray cluster (`python -m clip_app.index add --ray [auto|ADDRESS] ...`).

Ray Data reads, hashes, decodes and encodes the images in `map_batches` over a fixed pool of actors; each actor
loads the encoder once, from the same Settings as this process (model name or checkpoint path, model folder,
device; with --ray-gpus-per-actor, on its GPU). Images whose sha256 the library already holds are skipped by the
actors before decoding (a bulk add can be resumed). This process is the one writer: it takes the encoded rows in
batches and stores them exactly as the serial `add` does (the image file first, then the rows; duplicates checked
again under the write lock; one save or one transaction per batch), so reports, IDs and features are the same.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..config import Settings
from ..files import sha256_bytes
from ..images import ImageError, read_bytes
from .errors import LibraryError
from .feature_library import FeatureLibrary
from .ingest import Candidate, decode_for
from .reports import AddReport, AddResult

log = logging.getLogger(__name__)

WRITE_BATCH = 256  # rows per save (file store) or transaction (PostgreSQL)
CPU_ACTOR_THREADS = 1  # CPUs (and torch / ONNX Runtime threads) of a CPU actor
CONNECT_TIMEOUT_S = 3.0


class RayIngestError(LibraryError):
    """Ray is missing, its address does not answer, or the cluster cannot run the actors."""


@dataclass(frozen=True)
class RayOptions:
    """--ray ADDRESS, --ray-actors, --ray-gpus-per-actor, --batch-size."""

    address: str = "auto"
    actors: int = 2
    gpus_per_actor: float = 0.0
    batch_size: int = 32


def connect(address: str) -> Any:
    """ray.init for `auto` (the cluster this machine belongs to, else a new local one) or a head's host:port /
    ray://host:port; RayIngestError within a few seconds when the address does not answer."""
    try:
        import ray
    except ImportError as exc:
        raise RayIngestError("--ray needs Ray: pip install 'clip-app[scale]' (or pip install 'ray[data]')") from exc
    if address != "auto":
        check_address(address)
    if ray.is_initialized():
        return ray
    kwargs = init_kwargs()
    if address == "auto":
        try:
            ray.init(address="auto", **kwargs)
        except ConnectionError:
            log.info("no running Ray cluster found: starting a local one")
            ray.init(**kwargs)
        return ray
    try:
        ray.init(address=address, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure to join is the same message to the user
        raise RayIngestError(f"could not join the Ray cluster at {address}: {exc}; nothing was added") from None
    return ray


def init_kwargs() -> dict[str, Any]:
    """ray.init arguments: this clip_app package shipped to every worker (py_modules), no dashboard."""
    import clip_app

    return dict(runtime_env={"py_modules": [str(Path(clip_app.__file__).parent)]}, include_dashboard=False,
                log_to_driver=False, configure_logging=False)


def check_address(address: str) -> None:
    """RayIngestError within CONNECT_TIMEOUT_S when nothing answers at a Ray address."""
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise RayIngestError(f"the Ray address {address} does not answer ({exc.strerror or exc}); start the cluster "
                             "(`ray start --head` on the head node) or give its address as HOST:PORT (the head's GCS "
                             "port, 6379 by default) or ray://HOST:10001; nothing was added") from None


def _host_port(address: str) -> tuple[str, int]:
    rest = address.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise RayIngestError(f"--ray {address!r}: give auto, HOST:PORT or ray://HOST:PORT")
    return host, int(port)


class EncodeActor:
    """A Ray Data actor: loads the encoder once; per batch of paths reads, hashes, skips known hashes, decodes and
    encodes. Output columns: index, status (encoded | known | failed), sha256, size, ext, error, feature [B, D], and
    for the run's figures ready_at (when this actor had its model, unix time), load_s (how long loading took) and
    batch_at (when this batch started)."""

    def __init__(self, settings: dict, batch_size: int, known: Any, threads: int = 0) -> None:
        import warnings

        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        from ..encoders import ClipEncoder

        started = time.time()
        if threads:  # a CPU actor owns `threads` CPUs: as many torch threads, no more (others run beside it)
            torch.set_num_threads(threads)
        values = dict(settings)
        self.encoder = ClipEncoder(values["model"], values["device"], download_root=values["model_dir"],
                                   batch_size=batch_size, backend=values.get("backend") or None,
                                   precision=values.get("precision") or "fp32",
                                   threads=values.get("onnx_threads") or threads or None)
        if not isinstance(known, (set, frozenset, list)):  # an ObjectRef: fetched once per actor
            import ray

            known = ray.get(known)
        self.known = set(known)
        self.ready_at = time.time()
        self.load_s = self.ready_at - started

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch_at = time.time()
        n = len(batch["index"])
        status, digests, sizes, exts, errors = ["failed"] * n, [""] * n, [0] * n, [""] * n, [""] * n
        pixels: list[torch.Tensor] = []
        rows: list[int] = []
        for i, (path, shown) in enumerate(zip(batch["path"], batch["name"])):
            try:
                data, name = read_bytes(Path(str(path)), str(shown))
                digests[i], sizes[i] = sha256_bytes(data), len(data)
                if digests[i] in self.known:
                    status[i] = "known"
                    continue
                exts[i], image = decode_for(self.encoder, data, name)
            except ImageError as exc:
                errors[i] = str(exc)
                continue
            pixels.append(self.encoder.preprocess(image))
            rows.append(i)
            status[i] = "encoded"
        features = np.zeros((n, self.encoder.dim), dtype=np.float32)
        if pixels:
            features[rows] = self.encoder.encode_pixels(torch.stack(pixels)).numpy()
        return {"index": np.asarray(batch["index"]), "status": np.array(status), "sha256": np.array(digests),
                "size": np.array(sizes, dtype=np.int64), "ext": np.array(exts), "error": np.array(errors),
                "feature": features, "ready_at": np.full(n, self.ready_at), "load_s": np.full(n, self.load_s),
                "batch_at": np.full(n, batch_at)}


def ray_add(library: FeatureLibrary, settings: Settings, files: Sequence[Path], options: RayOptions,
            progress: Callable[[int, int], None] | None = None, write_batch: int = WRITE_BATCH) -> AddReport:
    """Add image files through a Ray actor pool; this process writes the library in batches of write_batch rows
    (see the module doc)."""
    files = [Path(f) for f in files]
    total = len(files)
    if not files:
        return AddReport(results=[])
    ray = connect(options.address)
    library.require_model(library.store.current())
    known = _known_hashes(library)
    plain = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()}
    plain["model"] = str(Path(settings.model).expanduser().absolute()) if Path(settings.model).expanduser().is_file() \
        else settings.model
    # results in the order of the paths: IDs are given as the serial add gives them, whichever actor finishes first
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    dataset = ray.data.from_items([{"index": i, "path": str(p.expanduser().absolute()), "name": str(p)}
                                   for i, p in enumerate(files)])
    threads = 0 if options.gpus_per_actor else CPU_ACTOR_THREADS
    dataset = dataset.map_batches(
        EncodeActor, batch_size=options.batch_size, compute=ray.data.ActorPoolStrategy(size=max(1, options.actors)),
        fn_constructor_kwargs={"settings": plain, "batch_size": options.batch_size, "known": ray.put(known),
                               "threads": threads},
        num_gpus=options.gpus_per_actor or None, num_cpus=threads or None, batch_format="numpy")
    results: list[AddResult | None] = [None] * total
    first_of_hash: dict[str, int] = {}
    repeats: list[tuple[int, int]] = []
    done, started, started_at = 0, time.perf_counter(), time.time()
    first_batch: float | None = None
    timing = _Timing()
    try:
        for batch in dataset.iter_batches(batch_size=max(1, write_batch), batch_format="numpy"):
            if first_batch is None:
                first_batch = time.perf_counter() - started  # the actors are up: starting them is most of this
            timing.take(batch)
            writing = time.perf_counter()
            candidates = _take_batch(library, files, batch, results, first_of_hash, repeats)
            if candidates:
                with library.store.writing() as state:
                    library.require_model(state)
                    library._store_new(state, candidates, results)
            timing.write_s += time.perf_counter() - writing
            done += len(batch["index"])
            if progress:
                progress(done, total)
    except LibraryError:
        raise
    except Exception as exc:  # a Ray task failure (an actor that cannot load the model on a worker, ...)
        raise RayIngestError(f"the Ray bulk add stopped: {_first_line(exc)}; what was stored before stays (run the "
                             "same command again to add the rest: stored images are skipped)") from exc
    for index, first in repeats:
        results[index] = AddResult(name=str(files[index]), status="duplicate", id=results[first].id,  # type: ignore
                                   feature=results[first].feature)  # type: ignore[union-attr]
    seconds = time.perf_counter() - started
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    run = RayRun(images=total, seconds=seconds, first_batch_s=first_batch or seconds, nodes=len(nodes),
                 actors=options.actors,
                 cpus=int(sum(n["Resources"].get("CPU", 0) for n in nodes)),
                 gpus=int(sum(n["Resources"].get("GPU", 0) for n in nodes)),
                 **timing.split(started_at, started_at + seconds))
    log.info("%s", run.summary())
    report = AddReport(results=[r for r in results if r is not None])
    report.ray = run  # type: ignore[attr-defined]
    return report


@dataclass
class RayRun:
    """What a Ray bulk add did: images, seconds, and the cluster it ran on; its start-up apart from its steady state."""

    images: int
    seconds: float
    first_batch_s: float  # until the first results reached this process (starting the actors: loading the model)
    nodes: int
    actors: int
    cpus: int
    gpus: int
    startup_s: float = 0.0  # until every actor had loaded its model (Ray Data's start, the workers, the model)
    model_load_s: float = 0.0  # the slowest actor's model load (part of startup_s)
    steady_images: int = 0  # images whose batch started after every actor was ready
    steady_s: float = 0.0  # from then to the end (the writes of the last batch included)
    write_s: float = 0.0  # this process's share: reading each new file again, the gallery copy, storing the rows

    @property
    def steady_images_per_s(self) -> float | None:
        """Throughput once every actor is up (None when no batch started after that)."""
        return self.steady_images / self.steady_s if self.steady_images and self.steady_s > 0 else None

    def summary(self) -> str:
        rate = self.images / self.seconds if self.seconds > 0 else 0.0
        steady = self.steady_images_per_s
        return (f"ray: {self.images} images in {self.seconds:.1f} s ({rate:.1f} images/s) with {self.actors} "
                f"actor{'s' if self.actors != 1 else ''} on {self.nodes} node{'s' if self.nodes != 1 else ''} "
                f"({self.cpus} CPUs, {self.gpus} GPUs); start-up {self.startup_s:.1f} s (model load "
                f"{self.model_load_s:.1f} s), then " + (f"{steady:.1f} images/s" if steady else "no batch after it"))


class _Timing:
    """The actors' timestamps (ready_at, load_s, batch_at columns), gathered from the batches as they arrive."""

    def __init__(self) -> None:
        self.ready: dict[float, float] = {}  # ready_at -> load_s, one entry per actor
        self.batches: list[tuple[float, int]] = []  # (batch_at, images)
        self.write_s = 0.0  # this process's own work on the results: reading the files again, the gallery, the rows

    def take(self, batch: dict[str, np.ndarray]) -> None:
        for ready_at, load_s in set(zip(batch["ready_at"].tolist(), batch["load_s"].tolist())):
            self.ready[ready_at] = load_s
        at, counts = np.unique(batch["batch_at"], return_counts=True)
        self.batches.extend(zip(at.tolist(), counts.tolist()))

    def split(self, started_at: float, ended_at: float) -> dict[str, Any]:
        """RayRun's write_s, startup_s, model_load_s, steady_images, steady_s (unix times of this machine and the
        actors')."""
        if not self.ready:
            return {"write_s": self.write_s}
        all_ready = max(self.ready)
        return {"write_s": self.write_s, "startup_s": max(0.0, all_ready - started_at),
                "model_load_s": max(self.ready.values()),
                "steady_images": sum(n for at, n in self.batches if at >= all_ready),
                "steady_s": max(0.0, ended_at - all_ready)}


def _known_hashes(library: FeatureLibrary) -> set[str]:
    """Every sha256 the library holds (the actors skip these images before decoding)."""
    return set(library.store.current().sha256)


def _take_batch(library: FeatureLibrary, files: list[Path], batch: dict[str, np.ndarray],
                results: list[AddResult | None], first_of_hash: dict[str, int],
                repeats: list[tuple[int, int]]) -> list[Candidate]:
    """Results for known, failed and repeated images; candidates (bytes read again here, checked against the
    actors' hash) for the new ones."""
    candidates: list[Candidate] = []
    for row, index in enumerate(batch["index"].tolist()):
        name, status, digest = str(files[index]), str(batch["status"][row]), str(batch["sha256"][row])
        if status == "failed":
            results[index] = AddResult(name=name, status="failed", id=None, error=str(batch["error"][row]))
            continue
        if status == "known":
            existing = library.find_sha256(digest)
            results[index] = AddResult(name=name, status="duplicate", id=existing,
                                       feature=None if existing is None else library.store.current().row_feature(
                                           existing))
            continue
        if digest in first_of_hash:
            repeats.append((index, first_of_hash[digest]))
            continue
        try:
            data, _ = read_bytes(files[index], name)
        except ImageError as exc:
            results[index] = AddResult(name=name, status="failed", id=None, error=str(exc))
            continue
        if sha256_bytes(data) != digest:
            results[index] = AddResult(name=name, status="failed", id=None,
                                       error=f"{name}: the file changed while it was being indexed; add it again")
            continue
        first_of_hash[digest] = index
        candidate = Candidate(index=index, name=name, sha256=digest,
                               ext=str(batch["ext"][row]), size=int(batch["size"][row]), data=data)
        candidate.feature = torch.from_numpy(np.array(batch["feature"][row], dtype=np.float32))
        candidates.append(candidate)
    return candidates


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
