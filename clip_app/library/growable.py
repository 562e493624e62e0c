"""Append-only buffers shared by successive library states, so that appending one row costs O(row), not O(N).

A Growable holds a buffer with spare capacity (a torch tensor or numpy array [capacity, ...], or a bytearray) and a
high-water mark `filled`: the length of the longest state made over it. Every state reads only its own first rows,
which never change. A state of length n may write its new rows in place only when n == filled (no other state has
grown past it) and they fit; otherwise (a branch: an older state appended to again, or no room left) the first n
rows are copied into a new buffer with spare room. Two branches therefore never see each other's rows.

A buffer made at load time is adopted as it is (no spare room): spare capacity appears only with the first append,
bounded by `slack`."""

from __future__ import annotations

import math
import threading
from typing import Union

import numpy as np
import torch

Buffer = Union[torch.Tensor, np.ndarray, bytes, bytearray]

MIN_SLACK = 256  # spare units (rows, or bytes of a text buffer) kept after a copy, at least
MIN_SLACK_BYTES = 4096  # and at least this many bytes (a text buffer's units are bytes)
MAX_SLACK_BYTES = 32 * 2**20  # and at most this many bytes per buffer (32,768 float16 rows of width 512)


def slack(units: int, unit_bytes: int) -> int:
    """Spare units kept after `units` (rows or bytes) of `unit_bytes` each: an eighth of them (a copy happens at most
    every units/8 appended: amortised O(1) per unit), at least MIN_SLACK units and MIN_SLACK_BYTES, at most
    MAX_SLACK_BYTES of memory (a copy of 1 GB per 32 MB appended stays cheap per row)."""
    unit_bytes = max(1, unit_bytes)
    least = max(MIN_SLACK, MIN_SLACK_BYTES // unit_bytes)
    return min(max(least, units // 8), max(least, MAX_SLACK_BYTES // unit_bytes))


def _unit_bytes(data: Buffer) -> int:
    """Bytes of one unit (row) of a buffer."""
    if isinstance(data, torch.Tensor):
        return math.prod(data.shape[1:]) * data.element_size()
    if isinstance(data, np.ndarray):
        return math.prod(data.shape[1:]) * data.itemsize
    return 1


def _allocate(like: Buffer, capacity: int) -> Buffer:
    """An uninitialised buffer of `capacity` units of like's kind, dtype and row shape."""
    if isinstance(like, torch.Tensor):
        return torch.empty((capacity,) + tuple(like.shape[1:]), dtype=like.dtype)
    if isinstance(like, np.ndarray):
        return np.empty((capacity,) + like.shape[1:], dtype=like.dtype)
    return bytearray(capacity)


def with_room(like: Buffer, units: int) -> Buffer:
    """An uninitialised buffer of like's kind, dtype and row shape for `units` units plus spare room (slack)."""
    return _allocate(like, units + slack(units, _unit_bytes(like)))


def _head(data: Buffer, n: int) -> Buffer:
    """The first n units of a buffer, without a copy."""
    return memoryview(data)[:n] if isinstance(data, (bytes, bytearray)) else data[:n]


class Growable:
    """A buffer [capacity, ...] and its high-water mark, shared by the states made from one another by appends."""

    __slots__ = ("data", "filled", "_lock")

    def __init__(self, data: Buffer, filled: int | None = None) -> None:
        self.data = data
        self.filled = len(data) if filled is None else filled
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return len(self.data)

    def view(self, n: int) -> Buffer:
        """The first n units (a view, not a copy)."""
        return _head(self.data, n)

    def extend(self, n: int, rows: Buffer) -> "Growable":
        """A Growable holding our first n units followed by `rows`: this one, written in place, when no state has
        grown past n and they fit; else a new buffer (the first n units copied, spare room after them)."""
        m = len(rows)
        with self._lock:  # the claim of rows n..n+m is atomic: two appends to one state cannot both write there
            mine = self.filled == n and n + m <= len(self.data) and not isinstance(self.data, bytes)
            if mine:
                self.filled = n + m
        if mine:
            self.data[n:n + m] = rows
            return self
        total = n + m
        data = with_room(self.data, total)
        data[:n] = _head(self.data, n)
        data[n:total] = rows
        return Growable(data, total)
