"""The entry points: ``cbir`` (:func:`main`) and ``run_cbir.py`` (:func:`legacy_main`).

This module imports nothing but the standard library, so that Ctrl-C at any moment, even in the
first fraction of a second while NumPy and the rest are still being imported
(:mod:`cbir.cli.commands`), is one line on stderr and exit status 130, never a traceback. Usage
errors come back as exit status 2 instead of ``SystemExit``, so ``main`` can be called in-process.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

INTERRUPTED = "cbir: interrupted; finished work is saved in the index"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cbir`` command: its exit status."""
    return _guarded(argv, legacy=False)


def legacy_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``run_cbir.py``: the original flags, index-then-query in one run."""
    return _guarded(argv, legacy=True)


def _guarded(argv: Sequence[str] | None, legacy: bool) -> int:
    try:
        from cbir.cli.commands import dispatch

        return dispatch(argv, legacy)
    except KeyboardInterrupt:
        return _interrupted()
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2), already printed
        return exc.code if isinstance(exc.code, int) else 2


def _interrupted() -> int:
    """Say so in one line; a second Ctrl-C meanwhile is ignored rather than a traceback."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: nothing to restore
        previous = None
    try:
        print(INTERRUPTED, file=sys.stderr, flush=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return 130
