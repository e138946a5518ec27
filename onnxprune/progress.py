"""Progress of long steps, reported without tying any layer to a terminal.

A long step (capturing statistics, scoring groups one by one, timing layers, checking, a sweep's
rows) runs inside ``with task(progress, "what it does", total) as step:`` and calls ``step()``
as it goes. ``progress`` is None (nothing is shown) or a :class:`Progress`; the command line
gives one that draws rich progress bars on a terminal.
"""

from __future__ import annotations

import contextlib
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
