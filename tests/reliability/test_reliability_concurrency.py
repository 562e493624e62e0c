"""Eight threads and two processes adding at once (some identical bytes, some distinct): through FeatureLibrary, and
through the App next to two `python -m clip_app.index add` processes. No image lost, no ID twice, no content twice,
every party told the same ID for the same bytes, check() clean."""

from __future__ import annotations

import hashlib
import multiprocessing
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from clip_app.library import FeatureLibrary
from clip_app.service import App
from tests.support.library_helpers import open_library
from tests.support.reliability_helpers import PRELOAD, unique_png

ROOT = Path(__file__).resolve().parents[2]
SHARED = [unique_png(60000 + k) for k in range(5)]  # every party adds these same bytes


def party_items(party: int) -> list[tuple[bytes, str]]:
    """Six distinct images of this party interleaved with the shared ones."""
    distinct = [unique_png(party * 100 + j) for j in range(6)]
    items: list[tuple[bytes, str]] = []
    for k in range(6):
        items.append((distinct[k], f"p{party}-{k}.png"))
        if k < len(SHARED):
            items.append((SHARED[(k + party) % len(SHARED)], f"p{party}-shared-{k}.png"))
    return items


def add_all(library: FeatureLibrary, party: int) -> list[tuple[str, str, int | None]]:
    """(sha256, status, id) of every add of a party: one call per image, then one call of three at once."""
    out = []
    items = party_items(party)
    for data, name in items[:-3]:
        result = library.add([(data, name)]).results[0]
        out.append((hashlib.sha256(data).hexdigest(), result.status, result.id))
    report = library.add(items[-3:])
    out += [(hashlib.sha256(d).hexdigest(), r.status, r.id) for (d, _), r in zip(items[-3:], report.results)]
    return out


def process_party(root: str, party: int, barrier: object, queue: object) -> None:
    """Another process: its own library object, released together with the threads."""
    from tests.support.fakes import color_encoder

    library = open_library(Path(root), color_encoder())
    barrier.wait()  # type: ignore[attr-defined]
    queue.put(add_all(library, party))  # type: ignore[attr-defined]


def assert_consistent(library: FeatureLibrary, outcomes: list[tuple[str, str, int | None]],
                      others_added: int = 0, others: frozenset[str] = frozenset()) -> None:
    """Every reported sha256 is stored once, under the ID every party was told; nothing else is stored; the
    parties' "added" counts add up to the library's size (others_added and others: the count and the sha256s of
    parties whose IDs are not known one by one)."""
    assert {status for _, status, _ in outcomes} <= {"added", "duplicate"}, outcomes
    told: dict[str, set[int | None]] = {}
    for digest, _, image_id in outcomes:
        told.setdefault(digest, set()).add(image_id)
    entries = list(library)
    stored = {e.sha256: e.id for e in entries}
    assert len(stored) == len(entries)  # no content twice
    assert len({e.id for e in entries}) == len(entries)  # no ID twice
    assert set(stored) == set(told) | others  # nothing lost, nothing extra
    for digest, ids in told.items():
        assert ids == {stored[digest]}, (digest[:12], ids, stored[digest])
    assert sum(1 for _, s, _ in outcomes if s == "added") + others_added == len(entries)
    report = library.check()
    assert report.ok, report.problems


def test_eight_threads_and_two_processes_add_at_once(tmp_path: Path, colour_encoder) -> None:
    root = tmp_path / "lib"
    shared_instance = open_library(root, colour_encoder)  # four threads share one object, four have their own
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    process_barrier, queue = context.Barrier(3), context.Queue()
    processes = [context.Process(target=process_party, args=(str(root), 8 + k, process_barrier, queue))
                 for k in range(2)]
    for process in processes:
        process.start()
    thread_barrier = threading.Barrier(9)
    outcomes: list[tuple[str, str, int | None]] = []
    errors: list[BaseException] = []

    def thread_party(party: int) -> None:
        try:
            library = shared_instance if party < 4 else open_library(root, colour_encoder)
            thread_barrier.wait()
            outcomes.extend(add_all(library, party))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=thread_party, args=(party,)) for party in range(8)]
    for thread in threads:
        thread.start()
    process_barrier.wait(timeout=120)  # both processes are ready: release everyone
    thread_barrier.wait(timeout=120)
    for thread in threads:
        thread.join(120)
    for _ in processes:
        outcomes.extend(queue.get(timeout=120))
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    assert not errors, errors
    assert len(outcomes) == 10 * len(party_items(0))
    assert_consistent(open_library(root, colour_encoder), outcomes)
    assert len(open_library(root, colour_encoder)) == 10 * 6 + len(SHARED)


def test_app_threads_and_two_command_lines_add_at_once(tmp_path: Path, tiny_encoder, tiny_checkpoint: Path) -> None:
    root = tmp_path / "lib"
    library = FeatureLibrary(root / "gallery", root / "features_library.pth", tiny_encoder)
    app = App(tiny_encoder, library)
    folders = []
    for k in range(2):  # each command line adds a folder: six images of its own and the shared ones
        folder = tmp_path / f"cli{k}"
        folder.mkdir()
        for j, (data, _) in enumerate(party_items(20 + k)):
            (folder / f"{j:02d}.png").write_bytes(data)
        folders.append(folder)
    flags = ["--model", str(tiny_checkpoint), "--device", "cpu", "--gallery", str(root / "gallery"),
             "--library", str(root / "features_library.pth")]
    commands = [subprocess.Popen([sys.executable, "-m", "clip_app.index", *flags, "add", str(folder)], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for folder in folders]
    outcomes: list[tuple[str, str, int | None]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def thread_party(party: int) -> None:
        """Add this party's images through the App, then keep adding new ones until both command lines are done,
        so the threads' writes surround theirs."""
        try:
            inbox = tmp_path / f"thread{party}"
            inbox.mkdir()
            items = party_items(party)
            barrier.wait()
            n = 0
            while n < len(items) or (any(c.poll() is None for c in commands) and n < 400):
                data, name = items[n] if n < len(items) else (unique_png(1000 + party * 400 + n), f"extra{n}.png")
                path = inbox / name
                path.write_bytes(data)
                result = app.add_images([path]).results[0]
                outcomes.append((hashlib.sha256(data).hexdigest(), result.status, result.id))
                n += 1
                time.sleep(0.05)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=thread_party, args=(party,)) for party in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    runs = [c.communicate(timeout=300) for c in commands]
    assert not errors, errors
    for command, (out, err) in zip(commands, runs):
        assert command.returncode == 0, err
        assert re.match(r"\d+ added, \d+ duplicates?, \d+ near-duplicates?, 0 failed", out), out
    cli_added = 0
    for out, _ in runs:
        cli_added += int(out.split(" added", 1)[0])
        for line in out.splitlines():  # what the command line was told about duplicates
            if line.startswith("duplicate: "):
                name, _, image_id = line.removeprefix("duplicate: ").rpartition(" is already ID ")
                outcomes.append((hashlib.sha256(Path(name).read_bytes()).hexdigest(), "duplicate", int(image_id)))
    final = FeatureLibrary(root / "gallery", root / "features_library.pth", tiny_encoder)
    cli_files = frozenset(hashlib.sha256(p.read_bytes()).hexdigest() for f in folders for p in f.iterdir())
    assert_consistent(final, outcomes, others_added=cli_added, others=cli_files)
    # the command lines' writes happened while the threads were writing
    cli_times = [e.added for e in final if re.fullmatch(r"\d\d\.png", e.name)]
    thread_times = [e.added for e in final if not re.fullmatch(r"\d\d\.png", e.name)]
    assert cli_times and min(thread_times) < min(cli_times) and max(cli_times) < max(thread_times)
    print(f"\n{len(final)} images: {len(thread_times)} through the App's threads, {len(cli_times)} by the command "
          "lines")
