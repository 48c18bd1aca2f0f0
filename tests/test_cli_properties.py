"""Property-based tests of the command line (issue 27): random values for every option of every command,
and random move logs for ``--undo``.

The options come from the parsers themselves (:func:`cbir.cli.options.build_parser`), so an option added
later is generated too, with values of every shape (numbers of any size, inf and nan, words, dates, file
names with bytes that are not UTF-8, the choices and garbage). Each example runs in-process through
:func:`cbir.cli.main.main` in a fresh copy of a small indexed folder. The property: exit status 0, or 2
with exactly one ``cbir: error:`` line (after at most some ``cbir:`` warnings) on stderr; never a
traceback, never exit 1 (an internal error), never a library's log line on stderr.

Where a value would make an example slow, not wrong, its strategy stays in a fast range (documented at
each entry of ``SPECIAL``): a valid ``--model`` is a small MobileNet, ``--size`` at most 96, ``--runtime``
not ``litert`` (a conversion takes a minute; tests/test_runtimes.py covers it), ``--store`` never a Milvus
Lite file that would start a server. ``serve`` and ``--watch`` return at once instead of serving or
watching (their own tests cover that), and ``--ray`` finds no Ray (so it is the one-line error without
the extra). Settings: ``tests/conftest.py`` (a fixed seed and 25 examples in CI; ``CBIR_HYPOTHESIS=deep``
and ``CBIR_HYPOTHESIS_EXAMPLES=N`` for more).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import save_image
from helpers import TINY_MODEL, ContentStandIn, logging_restored
from hypothesis import event, given, note
from hypothesis import strategies as st

from cbir.cli import main as entry
from cbir.cli.options import build_legacy_parser, build_parser
from cbir.indexing.indexer import IndexOptions, update_index

# ------------------------------------------------------------------------------------------ values

NUMBERS = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.integers(-(2**80), 2**80).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        ["0", "-1", "1", "2", "0.5", "1e400", "-0", "65535", "65536", "nan", "inf", "-inf", " 7 "]
    ),
)
SAFE = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
TEXT = st.text(alphabet=SAFE, max_size=20)
PART = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/"), min_size=1),
    st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b).map(os.fsdecode),
).filter(lambda p: p not in (".", ".."))
NAMES = st.lists(PART, min_size=1, max_size=3).map("/".join)  # relative, never above the folder
PATHS = st.one_of(
    st.sampled_from(
        ["data", "data/0.jpg", "data/copy", "data/copy/0.jpg", "missing", "missing/x", "out", "out/x.png"]
        + ["data/.cbir", "moves/log.jsonl", "garbage.jsonl", ".", "data/labels.csv"]
    ),
    NAMES,
)
DATES = st.one_of(st.dates().map(str), st.datetimes().map(lambda d: d.strftime("%Y-%m-%dT%H:%M")), NUMBERS)
ANY = st.one_of(NUMBERS, TEXT, PATHS, DATES)

SPECIAL: dict[str, st.SearchStrategy[str]] = {
    # a real backbone other than a small MobileNet costs seconds to build: the same code path
    "--model": st.one_of(st.sampled_from(["mobilenetv2", "mobilenet"]), TEXT),
    "--weights": st.one_of(st.just("random"), PATHS),
    "--size": st.one_of(st.integers(32, 96).map(str), NUMBERS),  # every valid size runs the same code
    "--scales": st.lists(
        st.one_of(
            st.floats(0.3, 2.0).map(lambda f: f"{f:.3g}"),
            st.sampled_from(["sqrt2", "1/sqrt2", "0", "-1", "inf", "nan", "100", "x", ""]),
        ),
        min_size=1,
        max_size=4,
    ).map(",".join),
    "--runtime": st.one_of(st.sampled_from(["auto", "keras"]), TEXT),  # litert converts for a minute
    # never a Milvus Lite file that would start a server in this process
    "--store": st.one_of(
        st.sampled_from(
            ["milvus://127.0.0.1:1", "milvus:missing/x.db", "milvus:", "milvus:x", "milvus://h:notaport"]
            + ["milvus://h:99999", "milvus+https://", "milvus://[::1", "folder:x", "milvus://h:1/bad-name"]
        ),
        TEXT.filter(lambda t: not t.startswith("milvus:") or "://" in t),
    ),
    "--batch-size": st.one_of(st.integers(1, 8).map(str), NUMBERS),
    "--workers": st.one_of(st.integers(1, 4).map(str), NUMBERS),
    "--shard": st.one_of(st.sampled_from(["0/2", "1/2", "0/1", "2/2", "-1/2", "1/0", "a/b"]), TEXT),
    "--host": st.one_of(st.sampled_from(["127.0.0.1", "localhost", "::1", "0.0.0.0", "256.1.1.1", ""]), TEXT),
}


def option_values(action: argparse.Action) -> st.SearchStrategy[list[str]]:
    """The words one occurrence of ``action`` adds to the command line."""
    flag = action.option_strings[-1] if action.option_strings else action.dest
    if action.nargs == 0:
        return st.just([flag])
    one = SPECIAL.get(flag)
    if one is None:
        one = st.one_of(st.sampled_from([str(c) for c in action.choices]), TEXT) if action.choices else ANY
    if action.nargs == "?":
        return st.one_of(st.just([flag]), one.map(lambda v: [flag, v]))
    if action.nargs in ("+", "*"):
        return st.lists(one, min_size=1, max_size=3).map(lambda vs: [flag, *vs])
    return one.map(lambda v: [flag, v])


def positional_values(action: argparse.Action) -> st.SearchStrategy[list[str]]:
    one = st.one_of(st.sampled_from(["data", "data/0.jpg", "missing", "data/copy/0.jpg"]), PATHS)
    if action.nargs == "?":
        return st.lists(one, max_size=1)
    if action.nargs in ("+", "*"):
        return st.lists(one, min_size=1 if action.nargs == "+" else 0, max_size=3)
    return one.map(lambda v: [v])


def command_lines(parser: argparse.ArgumentParser, base: list[str]) -> st.SearchStrategy[list[str]]:
    """Random command lines of ``parser``: its positionals, ``base``, then up to 5 of its options."""
    positionals = [a for a in parser._actions if not a.option_strings]  # noqa: SLF001
    optionals = [a for a in parser._actions if a.option_strings]  # noqa: SLF001

    @st.composite
    def build(draw: Callable[..., object]) -> list[str]:
        words: list[str] = []
        for action in positionals:
            words += draw(positional_values(action))  # type: ignore[operator]
        words += base
        chosen = draw(st.lists(st.sampled_from(optionals), max_size=5))
        for action in chosen:
            words += draw(option_values(action))  # type: ignore[operator]
        return words

    return build()


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    return dict(sub.choices)


def base_of(parser: argparse.ArgumentParser) -> list[str]:
    """The small model's options, for a parser that has feature options."""
    flags = {s for a in parser._actions for s in a.option_strings}  # noqa: SLF001
    return list(TINY_MODEL) if "--weights" in flags else []


# ----------------------------------------------------------------------------------------- running


LIBRARY_LINE = re.compile(
    r"^(\w+:)?(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b|^[IWEF]\d{4} |^\d{4}-\d\d-\d\d[ T]|Exception ignored"
)
"""What a library's own log line looks like (Python's logging, absl/glog, a timestamp first)."""


def check_outcome(code: int, out: str, err: str) -> None:
    """The property: 0, or 2 with one error line; cbir's lines only; never a traceback or exit 1."""
    note(f"exit {code}\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}")
    event(f"exit {code}")  # --hypothesis-show-statistics: how many examples got how far
    assert "Traceback" not in err and "internal error" not in err
    assert code in (0, 2), f"exit {code}: {err}"
    lines = err.splitlines()
    foreign = [line for line in lines if LIBRARY_LINE.search(line) and not line.startswith("cbir: ")]
    assert not foreign, foreign
    if code == 2:
        errors = [line for line in lines if line.startswith("cbir: error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], err


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A folder with images (two identical), a labels file, an index of it made without a model (the
    vectors a function of the bytes, so the copies are duplicates) and the log of a real move."""
    base = tmp_path_factory.mktemp("template")
    data = base / "data"
    for i in range(3):
        save_image(data / f"{i}.jpg", seed=i)
    (data / "copy").mkdir()
    shutil.copy2(data / "0.jpg", data / "copy/0.jpg")
    (data / "labels.csv").write_text("file,label\n0.jpg,a\ncopy/0.jpg,a\n1.jpg,b\n2.jpg,b\n")
    update_index(data, ContentStandIn(), options=IndexOptions(progress=False))
    (base / "moves").mkdir()
    (base / "moves/log.jsonl").write_text(
        json.dumps(
            {"log": "cbir duplicates moves", "version": 2, "dataset": str(data), "dest": str(base / "moves")}
        )
        + "\n"
    )
    (base / "garbage.jsonl").write_bytes(b"\x00\xff[1,2,3]\n")
    return base


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What would block or reach outside: serving, watching, Ray; the process state main() changes."""
    import cbir.web.server
    from cbir.indexing.watch import FolderWatcher

    monkeypatch.setattr(cbir.web.server, "serve", lambda *args, **kwargs: None)
    monkeypatch.setattr(FolderWatcher, "run", lambda self: None)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails: --ray is the missing extra's error
    monkeypatch.setenv("MPLBACKEND", "Agg")
    term = signal.getsignal(signal.SIGTERM)
    cwd = os.getcwd()
    with logging_restored():
        yield
    os.chdir(cwd)
    signal.signal(signal.SIGTERM, term)


def run_in_copy(
    template: Path, run: Callable[[list[str]], int], argv: list[str], capfd: pytest.CaptureFixture[str]
) -> None:
    note(f"argv: {argv!r}")
    work = Path(tempfile.mkdtemp(prefix="cbir-prop-"))
    try:
        shutil.copytree(template, work, dirs_exist_ok=True, symlinks=True)
        os.chdir(work)
        capfd.readouterr()
        code = run(argv)
        out, err = capfd.readouterr()
        check_outcome(code, out, err)
    finally:
        os.chdir(template)
        shutil.rmtree(work, ignore_errors=True)


COMMANDS = subparsers()
NO_MODEL = ["duplicates", "models"]  # never build a model: the fast lane
WITH_MODEL = [c for c in COMMANDS if c not in NO_MODEL]


def test_every_command_is_covered():
    """A new command is generated too: it lands in one of the two lists."""
    assert set(NO_MODEL) | set(WITH_MODEL) == set(COMMANDS) and "index" in WITH_MODEL


@pytest.mark.parametrize("command", NO_MODEL)
def test_random_options_without_a_model(command, template, isolated, capfd):
    parser = COMMANDS[command]

    @given(command_lines(parser, base_of(parser)))
    def check(argv: list[str]) -> None:
        run_in_copy(template, entry.main, [command, *argv], capfd)

    check()


@pytest.mark.slow
@pytest.mark.parametrize("command", WITH_MODEL)
def test_random_options_with_a_small_model(command, template, isolated, capfd):
    parser = COMMANDS[command]

    @given(command_lines(parser, base_of(parser)))
    def check(argv: list[str]) -> None:
        run_in_copy(template, entry.main, [command, *argv], capfd)

    check()


@pytest.mark.slow
def test_random_options_of_run_cbir(template, isolated, capfd):
    parser = build_legacy_parser()
    base = ["-dataset", "data", "-img_query", "data/0.jpg", *TINY_MODEL]

    @given(command_lines(parser, base))
    def check(argv: list[str]) -> None:
        run_in_copy(template, entry.legacy_main, argv, capfd)

    check()


# ------------------------------------------------------------------------------------- move logs

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
KEYS = ["log", "version", "dataset", "dest", "move", "to", "moved", "failed", "error", "finished"]


@st.composite
def move_logs(draw: Callable[..., object]) -> bytes:
    """Random bytes, random JSON, or a real log's records with keys dropped, values swapped for
    values of other types, and lines cut or shuffled."""
    kind = draw(st.sampled_from(["bytes", "json", "mutated"]))  # type: ignore[operator]
    if kind == "bytes":
        return draw(st.binary(max_size=300))  # type: ignore[operator,no-any-return]
    if kind == "json":
        lines = draw(st.lists(JSON_VALUES, max_size=5))  # type: ignore[operator]
        return "".join(json.dumps(v) + "\n" for v in lines).encode()  # type: ignore[attr-defined]
    records: list[dict[str, object]] = [
        {"log": "cbir duplicates moves", "version": 2, "dataset": "DATA", "dest": "DEST"},
        {"move": "DATA/copy/0.jpg", "to": "DEST/copy/0.jpg"},
        {"moved": "DATA/copy/0.jpg"},
        {"finished": 1},
    ]
    for record in records:
        for key in list(record):
            change = draw(st.sampled_from(["keep"] * 6 + ["drop", "retype", "rekey"]))  # type: ignore[operator]
            if change == "drop":
                del record[key]
            elif change == "retype":
                record[key] = draw(JSON_VALUES)  # type: ignore[operator]
            elif change == "rekey":
                record[draw(st.sampled_from(KEYS))] = record.pop(key)  # type: ignore[operator]
    order = draw(st.permutations(records))  # type: ignore[operator]
    text = "".join(json.dumps(r) + "\n" for r in order)  # type: ignore[attr-defined]
    cut = draw(st.integers(0, len(text)))  # type: ignore[operator]
    return text[: len(text) - cut if draw(st.booleans()) else len(text)].encode()  # type: ignore[operator]


def test_random_move_logs_undo_cleanly(template, isolated, capfd):
    """``--undo`` of any log: one line and exit 2 when it is not a move log (nothing moved), else what
    it put back; the dataset never loses a file and nothing appears outside it and the move folder."""

    @given(move_logs())
    def check(content: bytes) -> None:
        work = Path(tempfile.mkdtemp(prefix="cbir-undo-"))
        try:
            shutil.copytree(template / "data", work / "data", symlinks=True)
            (work / "dest/copy").mkdir(parents=True)
            os.rename(work / "data/copy/0.jpg", work / "dest/copy/0.jpg")  # as the real move did
            real = content.replace(b"DATA", str(work / "data").encode()).replace(
                b"DEST", str(work / "dest").encode()
            )
            (work / "dest/log.jsonl").write_bytes(real)
            note(f"log: {real!r}")
            before = sorted(p.relative_to(work).as_posix() for p in work.rglob("*"))
            capfd.readouterr()
            code = entry.main(["duplicates", "--undo", str(work / "dest/log.jsonl")])
            out, err = capfd.readouterr()
            check_outcome(code, out, err)
            after = sorted(p.relative_to(work).as_posix() for p in work.rglob("*"))
            moved_back = {"data/copy/0.jpg"} if "data/copy/0.jpg" in after else set()
            assert set(after) - set(before) <= moved_back
            assert set(before) - set(after) <= {"dest/copy/0.jpg"}
            assert ("data/copy/0.jpg" in after) != ("dest/copy/0.jpg" in after)  # one place, never both
        finally:
            shutil.rmtree(work, ignore_errors=True)

    check()
