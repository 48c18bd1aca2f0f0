"""The progress bar for long work (tqdm on stderr; hidden when stderr is not a terminal)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

from cbir.core.types import ProgressBar

T = TypeVar("T")


def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool | None = None) -> ProgressBar:
    """A tqdm bar; ``enabled`` None shows it only on a terminal, False never, True always."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=None if enabled is None else not enabled,
        dynamic_ncols=True,
        smoothing=0.1,
    )


def with_progress(results: Iterator[T], total: int, progress: bool | None, desc: str) -> Iterator[T]:
    """``results`` as they come, driving a progress bar named ``desc`` (None: only on a terminal;
    False: none); closing the iterator closes ``results``."""
    if progress is False:
        yield from results
        return
    bar = progress_bar(total=total, desc=desc, unit="img", enabled=progress)
    try:
        for result in results:
            yield result
            bar.update(1)
    finally:
        bar.close()
        close = getattr(results, "close", None)
        if close is not None:
            close()
