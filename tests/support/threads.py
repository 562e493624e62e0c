"""Run one function in several threads at once and collect what they raised (a thread's exception would otherwise
only be printed)."""

from __future__ import annotations

import threading
from typing import Callable, Iterable, Sequence


def run_in_threads(target: Callable[..., object], args: Iterable[Sequence[object]],
                   timeout: float = 120.0) -> list[BaseException]:
    """Start target(*a) in one thread per `a` in args, wait for all (each up to `timeout` seconds) and return the
    exceptions they raised, plus a TimeoutError for each thread still running."""
    errors: list[BaseException] = []

    def guarded(*a: object) -> None:
        try:
            target(*a)
        except BaseException as exc:  # noqa: BLE001 - returned to the test, which asserts on it
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=tuple(a)) for a in args]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    errors += [TimeoutError(f"{thread.name} still running after {timeout} s") for thread in threads
               if thread.is_alive()]
    return errors
