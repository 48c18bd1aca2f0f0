"""The progress bar for long work (tqdm on stderr; hidden when stderr is not a terminal)."""

from __future__ import annotations

from cbir.core.types import ProgressBar


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
