"""pgvector's halfvec in binary form, both ways: rows sent as query parameters and COPY values without a text round
(formatting and parsing 512 numbers costs more than the query that uses them), and rows read back."""

from __future__ import annotations

import struct
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["Halfvec", "halfvec_bytes", "halfvec_rows", "register_halfvec"]


def halfvec_bytes(rows: torch.Tensor | np.ndarray) -> list[bytes]:
    """Rows [N, D] (rounded to float16) -> halfvec binary values (int16 dim, int16 0, D big-endian halves)."""
    if isinstance(rows, torch.Tensor):
        rows = rows.detach().to(torch.float16).cpu().numpy()
    big = np.ascontiguousarray(rows, dtype=">f2")
    head = struct.pack("!hh", big.shape[1], 0)
    return [head + big[i].tobytes() for i in range(len(big))]


def halfvec_rows(values: Sequence[bytes], dim: int) -> torch.Tensor:
    """Halfvec binary values -> float16 [N, D]."""
    if not values:
        return torch.empty(0, dim, dtype=torch.float16)
    joined = b"".join(v[4:] for v in values)
    return torch.from_numpy(np.frombuffer(joined, dtype=">f2").astype(np.float16).reshape(len(values), dim).copy())


class Halfvec:
    """One row [D] as a binary halfvec query parameter (`%b`; the connection must have register_halfvec run)."""

    __slots__ = ("data",)

    def __init__(self, row: torch.Tensor) -> None:
        self.data = halfvec_bytes(row.reshape(1, -1))[0]


def register_halfvec(conn: Any) -> bool:
    """Teach a psycopg connection to send Halfvec values in binary; False when the database has no halfvec type
    (pgvector not enabled: the store refuses such a database anyway)."""
    from psycopg.adapt import Dumper
    from psycopg.pq import Format

    oid = conn.execute("SELECT to_regtype('halfvec')::oid").fetchone()[0]
    if oid is None:
        return False

    class HalfvecDumper(Dumper):
        format = Format.BINARY

        def dump(self, obj: Halfvec) -> bytes:
            return obj.data

    HalfvecDumper.oid = int(oid)
    conn.adapters.register_dumper(Halfvec, HalfvecDumper)
    return True
