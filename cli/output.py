"""Terminal output: JSON on a clean stdout, human text on stderr, tables, progress bars."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any


@contextlib.contextmanager
def json_stdout(enabled: bool) -> Iterator[Callable[[Any], None]]:
    """While active, anything written to fd 1 (by us, Python libraries or C code) goes to stderr;
    the yielded function writes one JSON line to the real stdout. With ``enabled`` False it prints."""
    if not enabled:
        yield lambda obj: print(json.dumps(obj, ensure_ascii=False))
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    real = os.fdopen(saved, "w", encoding="utf-8", closefd=False)
    try:
        yield lambda obj: (real.write(json.dumps(obj, ensure_ascii=False) + "\n"), real.flush())
    finally:
        sys.stdout.flush()
        real.flush()
        os.dup2(saved, 1)
        os.close(saved)


def say(message: str) -> None:
    """A human message: always stderr, so stdout stays machine-readable."""
    print(message, file=sys.stderr, flush=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False))]
        return "  ".join(parts).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


@contextlib.contextmanager
def progress_bar(label: str, enabled: bool) -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr when it is a terminal; otherwise a no-op callback. The callback takes
    (done, total) and optionally a stage: a new stage restarts the bar (and its ETA) under that label."""
    if not enabled or not sys.stderr.isatty():
        yield lambda done, total, stage=None: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def tick(done: int, total: int, stage: str | None = None) -> None:
            if stage is not None and stage != bar.tasks[0].description:
                bar.reset(task, total=total, completed=done, description=stage)
            else:
                bar.update(task, completed=done, total=total)

        yield tick
