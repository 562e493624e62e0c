"""`index add` reads only regular files (issue 12, defect 7): a FIFO or a device is skipped and named, never opened
for reading (a FIFO hung forever, /dev/zero grew to 6.9 GB); files over --max-file-size are skipped too."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_app.images import ImageError, read_bytes
from clip_app.index import collect_paths
from clip_app.index import main as index_main
from tests.support.app_helpers import write_png


def test_collect_paths_skips_and_names_what_is_not_a_regular_file(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    good = write_png(folder / "good.png", "red")
    big = folder / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 100, 3), dtype=np.uint8)).save(big)
    os.mkfifo(folder / "pipe.jpg")
    files, failures = collect_paths([str(folder), "/dev/zero", str(folder / "pipe.jpg")], max_file_size=1000)
    assert files == [good]
    reasons = {f.name: f.error for f in failures}
    assert "a FIFO (named pipe), not a regular file" in reasons[str(folder / "pipe.jpg")]
    assert "a character device, not a regular file" in reasons["/dev/zero"]
    assert "is over the size limit of 1000 B" in reasons[str(big)]


def test_read_bytes_never_waits_on_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(_try_read(fifo)), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "reading a FIFO blocked"
    assert "is not a regular file (a FIFO (named pipe))" in str(result[0])
    with pytest.raises(ImageError, match="is not a regular file \\(a character device\\)"):
        read_bytes("/dev/zero")
    with pytest.raises(ImageError, match="over the size limit of 10 bytes"):
        read_bytes(write_png(tmp_path / "a.png", "red"), max_bytes=10)


def _try_read(path: Path) -> object:
    try:
        return read_bytes(path)
    except ImageError as exc:
        return exc


def test_index_add_of_a_fifo_and_a_device_finishes_and_names_them(tmp_path: Path, tiny_checkpoint: Path,
                                                                  capsys) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    good = write_png(tmp_path / "in" / "good.png", "green")
    big = tmp_path / "in" / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 100, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 1024
    flags = ["--model", str(tiny_checkpoint), "--device", "cpu", "--gallery", str(tmp_path / "gallery"),
             "--library", str(tmp_path / "lib.pth"), "--max-file-size", "1KB"]
    done: list[int] = []
    worker = threading.Thread(target=lambda: done.append(index_main(
        [*flags, "add", str(tmp_path / "pipe.png"), "/dev/zero", str(good), str(big)])), daemon=True)
    worker.start()
    worker.join(120)
    assert done == [0], "index add did not finish"
    out = capsys.readouterr().out
    assert "1 added" in out and "pipe.png: skipped: a FIFO (named pipe), not a regular file" in out
    assert "/dev/zero: skipped: a character device" in out and "big.png: skipped: " in out
    assert sorted(p.name for p in (tmp_path / "gallery").iterdir()) == ["000001.png"]
