"""Progress of long steps, reported without tying any layer to a terminal.

A long step (capturing statistics, scoring groups one by one, timing layers, checking, a sweep's
rows) runs inside ``with task(progress, "what it does", total) as step:`` and calls ``step()``
as it goes. ``progress`` is None (nothing is shown) or a :class:`Progress`; the command line
gives one that draws rich progress bars on a terminal.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator


class Progress:
    """Receives the start, the advances and the end of each long step; shows nothing."""

    def begin(self, description: str, total: int | None) -> object:
        return None

    def advance(self, handle: object, amount: int = 1) -> None:
        return None

    def end(self, handle: object) -> None:
        return None


@contextlib.contextmanager
def task(progress: Progress | None, description: str,
         total: int | None = None) -> Iterator[Callable[..., None]]:
    """A step of ``total`` parts (None: unknown); yields ``step(amount=1)``."""
    if progress is None:
        yield lambda amount=1: None
        return
    handle = progress.begin(description, total)
    try:
        yield lambda amount=1: progress.advance(handle, amount)
    finally:
        progress.end(handle)


class StageClock(Progress):
    """Forwards every step to ``inner`` (or nowhere) and records how long each took: the
    report's ``stages``, where a prune's time went. A step inside another (capturing
    statistics inside scoring) is listed as well, after it; their times overlap."""

    def __init__(self, inner: Progress | None = None):
        self.inner, self.stages = inner, []

    def begin(self, description: str, total: int | None) -> object:
        handle = self.inner.begin(description, total) if self.inner is not None else None
        return description, time.perf_counter(), handle

    def advance(self, handle: object, amount: int = 1) -> None:
        if self.inner is not None:
            self.inner.advance(handle[2], amount)

    def end(self, handle: object) -> None:
        if self.inner is not None:
            self.inner.end(handle[2])
        self.stages.append({"step": handle[0],
                            "seconds": round(time.perf_counter() - handle[1], 3)})
