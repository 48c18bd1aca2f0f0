"""The command line's argument types: numbers checked at parse time, scales, dates, similarity
thresholds, and the parser whose usage errors are one line."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import NoReturn

from cbir.encoders.backbones import REGISTRY
from cbir.encoders.features import (
    DEFAULT_MODEL,
    MAX_GEM_P,
    MAX_INPUT_SIDE,
    MAX_SCALES,
    MIN_GEM_P,
    MIN_INPUT_SIDE,
    Kind,
)
from cbir.search.words import MAX_TEXT

BREAKS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
"""Control characters, and every other character that ends a line for someone (``str.splitlines``)."""


def one_line(message: str) -> str:
    """``message`` on one line: control characters and line breaks (a newline or carriage return in a
    file name the user typed) written as escapes (``\\x0d``), so no message can forge or hide a line."""
    return BREAKS.sub(lambda m: "\\" + ascii(m.group())[2:-1], message)


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr (exit status 2), like every error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"cbir: error: {self.prog}: {one_line(message)} (see {self.prog} --help)\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """argparse's, then the checks that need two options at once (``--size`` with ``--scales``)."""
        parsed, rest = super().parse_known_args(args, namespace)
        problem = check_input_sides(parsed)
        if problem:
            self.error(problem)
        return parsed, rest


def _number(
    kind: Callable[[str], float],
    low: float,
    what: str,
    inclusive: bool = True,
    high: float | None = None,
) -> Callable[[str], float]:
    """An argparse type: a finite number of ``kind`` at least ``low`` (or above it when not
    inclusive) and at most ``high``."""

    def parse(text: str) -> float:
        try:
            value = kind(text.strip())
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if value < low or (not inclusive and value == low) or (high is not None and value > high):
            if high is None:
                bound = f"at least {low:g}" if inclusive else f"above {low:g}"
            else:
                bound = f"from {low:g} to {high:g}" if inclusive else f"above {low:g} and at most {high:g}"
            raise argparse.ArgumentTypeError(f"{text!r} must be {bound}")
        return value

    parse.__name__ = what.split()[-1]  # argparse names the type in its messages
    return parse


def whole(low: int, high: int) -> Callable[[str], float]:
    """An argparse type: a whole number from ``low`` to ``high``."""
    return _number(int, low, "a whole number", high=high)


def number(low: float, high: float, inclusive: bool = True) -> Callable[[str], float]:
    """An argparse type: a finite number from ``low`` (or above it) to ``high``."""
    return _number(float, low, "a number", inclusive=inclusive, high=high)


POSITIVE_INT = whole(1, 2**62)
NON_NEGATIVE_INT = whole(0, 2**62)
POSITIVE = _number(float, 0, "a number", inclusive=False)
NON_NEGATIVE = _number(float, 0, "a number")
PORT = whole(0, 65535)
GEM_P = number(MIN_GEM_P, MAX_GEM_P)
INPUT_SIZE = whole(MIN_INPUT_SIDE, MAX_INPUT_SIDE)
TEXT_WEIGHT = number(0, 1)


def similarity(text: str) -> float:
    """An argparse type: a cosine similarity threshold in (0, 1]."""
    value = POSITIVE(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at most 1")
    return value


def scales(text: str) -> tuple[float, ...]:
    """``--scales``: comma-separated positive numbers, ``sqrt2`` and ``1/sqrt2`` allowed; each at most
    the largest input side over the smallest (the side each scale gives is checked with ``--size``
    once both are known: :func:`check_input_sides`)."""
    named = {"sqrt2": 2**0.5, "1/sqrt2": 2**-0.5}
    try:
        values = tuple(named.get(t.strip().lower()) or float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad scales {text!r}: use numbers like 1,0.707,1.414") from None
    if not values or any(not v > 0 or not math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError("scales must be positive")
    if len(values) > MAX_SCALES:
        raise argparse.ArgumentTypeError(f"at most {MAX_SCALES} scales")
    most = MAX_INPUT_SIDE / MIN_INPUT_SIDE
    if any(v > most or v < 1 / most for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: each scale must be from 1/{most:g} to {most:g}")
    return values


def check_input_sides(args: argparse.Namespace) -> str | None:
    """Why ``--size`` and ``--scales`` together ask for a network input larger than
    :data:`MAX_INPUT_SIDE` a side (None: they do not). ``--size`` unset: the backbone's own input size,
    when the backbone is known."""
    chosen: tuple[float, ...] | None = getattr(args, "scales", None)
    if not chosen:
        return None
    size = getattr(args, "size", None)
    if size is None:
        backbone = REGISTRY.get(getattr(args, "model", None) or DEFAULT_MODEL)
        if backbone is None:
            return None
        size = backbone.input_size
    side = round(size * max(chosen))
    if side > MAX_INPUT_SIDE:
        return (
            f"argument --scales: {max(chosen):g} times the input size {size} is {side} px a side; "
            f"at most {MAX_INPUT_SIDE} (each view is held in memory as {side}x{side}x3 floats)"
        )
    return None


def path(text: str) -> str:
    """An argparse type: a file or folder name, not empty (``--move-to ""`` is not the current folder)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path")
    return text


def words(text: str) -> str:
    """``--text``: words to search the labels by, at least one that is not blank, at most MAX_TEXT
    characters (the web API's limit)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("no words")
    if len(text) > MAX_TEXT:
        raise argparse.ArgumentTypeError(f"longer than {MAX_TEXT} characters")
    return text


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
    "exponent": GEM_P,
    "input size": INPUT_SIZE,
    "scales": scales,
}
"""How the command line reads each kind of declared feature setting (``FeatureSetting.kind``; the
parse-time checks above, so ``--size`` is 32 to 2048 and ``--gem-p`` 0.1 to 8)."""
