"""The command line's argument types: numbers checked at parse time, scales, dates, similarity
thresholds, and the parser whose usage errors are one line."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import datetime
from typing import NoReturn

from cbir.encoders.features import Kind


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr (exit status 2), like every error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"cbir: error: {self.prog}: {message} (see {self.prog} --help)\n")


def _number(
    kind: Callable[[str], float], low: float, what: str, inclusive: bool = True
) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` at least ``low`` (or above it when not inclusive)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value != value or value < low or (not inclusive and value == low):
            bound = f"at least {low:g}" if inclusive else f"above {low:g}"
            raise argparse.ArgumentTypeError(f"{text!r} must be {bound}")
        return value

    return parse


POSITIVE_INT = _number(int, 1, "a whole number")
NON_NEGATIVE_INT = _number(int, 0, "a whole number")
POSITIVE = _number(float, 0, "a number", inclusive=False)
NON_NEGATIVE = _number(float, 0, "a number")
INPUT_SIZE = _number(int, 32, "a whole number")


def similarity(text: str) -> float:
    """An argparse type: a cosine similarity threshold in (0, 1]."""
    value = POSITIVE(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at most 1")
    return value


def scales(text: str) -> tuple[float, ...]:
    """``--scales``: comma-separated positive numbers, ``sqrt2`` and ``1/sqrt2`` allowed."""
    named = {"sqrt2": 2**0.5, "1/sqrt2": 2**-0.5}
    try:
        values = tuple(named.get(t.strip().lower()) or float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad scales {text!r}: use numbers like 1,0.707,1.414") from None
    if not values or any(not v > 0 or v == float("inf") for v in values):
        raise argparse.ArgumentTypeError("scales must be positive")
    return values


def moment(text: str) -> str:
    """``--since``/``--until``: a date ``YYYY-MM-DD``, or a time ``YYYY-MM-DDTHH:MM[:SS]``."""
    for form, width in (("%Y-%m-%d", 10), ("%Y-%m-%dT%H:%M", 16), ("%Y-%m-%dT%H:%M:%S", 19)):
        try:
            datetime.strptime(text, form)
        except ValueError:
            continue
        return text if width != 16 else text + ":00"
    raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD) or time (YYYY-MM-DDTHH:MM)")


KINDS: dict[Kind, Callable[[str], object]] = {
    "text": str,
    "positive": POSITIVE,
    "input size": INPUT_SIZE,
    "scales": scales,
}
"""How the command line reads each kind of declared feature setting (``FeatureSetting.kind``; the
parse-time checks above, so ``--size`` is at least 32 and ``--gem-p`` above 0)."""
