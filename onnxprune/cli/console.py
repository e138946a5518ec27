"""Terminal output through rich: tables, progress bars on stderr, and one-line errors.

Output that goes to a file or a pipe stays plain: no colour, no bars, and tables wide enough
not to wrap (a log line per row)."""

from __future__ import annotations

import sys

from rich import box
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bars, SpinnerColumn,
                           TextColumn, TimeElapsedColumn)
from rich.table import Table

from ..progress import Progress

PLAIN_WIDTH = 200   # columns of a table written to a file or a pipe


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    terminal = stream.isatty()
    return Console(stderr=stderr, highlight=False, markup=False, soft_wrap=not terminal,
                   width=None if terminal else PLAIN_WIDTH, no_color=not terminal)


def echo(text: str = "") -> None:
    """One line (or more) on stdout, never wrapped when not a terminal."""
    _console().print(text)


def error(text: str) -> None:
    """One line on stderr, never wrapped."""
    _console(stderr=True).print(text, soft_wrap=True)


def table(*columns: str, title: str | None = None) -> Table:
    """A table with these column headers; numbers (headers ending in a unit or a ratio) are
    right-aligned by the caller through ``justify``."""
    t = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False)
    for column in columns:
        name, _, justify = column.partition("|")
        t.add_column(name, justify=justify or "left", no_wrap=True)
    return t


def show(renderable) -> None:
    _console().print(renderable)


class RichProgress(Progress):
    """Progress bars on a terminal's stderr (nothing in pipes and logs); steps may nest."""

    def __init__(self):
        console = _console(stderr=True)
        self.enabled = console.is_terminal
        self.bars = Bars(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                         MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                         transient=True)
        self.open = 0

    def begin(self, description: str, total: int | None) -> object:
        if not self.enabled:
            return None
        if self.open == 0:
            self.bars.start()
        self.open += 1
        return self.bars.add_task(description, total=total)

    def advance(self, handle: object, amount: int = 1) -> None:
        if handle is not None:
            self.bars.advance(handle, amount)

    def end(self, handle: object) -> None:
        if handle is None:
            return
        self.bars.remove_task(handle)
        self.open -= 1
        if self.open == 0:
            self.bars.stop()


def progress_for(as_json: bool = False) -> RichProgress | None:
    """Bars for a command, unless it prints JSON (then stderr stays quiet too)."""
    return None if as_json else RichProgress()


def fmt(n) -> str:
    """A count in k/M/G."""
    if n is None:
        return "n/a"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def kept(after, before) -> str:
    return f"{after / before:.1%}" if before and after is not None else "n/a"


def size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n}B"


def number(value, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else format(value, spec) + suffix


def percent(value) -> str:
    return number(value, ".1%")
