"""Golden-file tests of the human-readable output: query listings, the model table, evaluation tables.

The expected text lives in tests/golden/ and is compared byte for byte. After an intended change of
format, regenerate it with ``CBIR_UPDATE_GOLDEN=1 python3 -m pytest tests/test_text_output.py`` and
review the diff. The option goldens (``help-*.txt``) hold each parser's options as data
(:func:`options_of`), not argparse's help page, whose layout differs between Python versions.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import pytest

from cbir.cli.text import MODELS_NOTE, format_models, format_results
from cbir.core.results import Match, QueryResult
from cbir.encoders.backbones import REGISTRY
from cbir.encoders.joint.presets import PRESETS
from cbir.encoders.registry import ModelInfo, describe_models
from cbir.service.evaluate import ClassRow, EvaluationReport

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("CBIR_UPDATE_GOLDEN") == "1"


def check_golden(name: str, text: str) -> None:
    """``text`` as ``print`` writes it must equal the golden file ``name`` (or replace it, when updating)."""
    path = GOLDEN / name
    printed = (text + "\n").encode("utf-8")
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(printed)
        return
    if not path.is_file():
        pytest.fail(f"golden file {path} is missing; create it with CBIR_UPDATE_GOLDEN=1")
    assert printed == path.read_bytes(), f"output differs from {path} (CBIR_UPDATE_GOLDEN=1 to accept)"


RESULTS = [
    QueryResult(
        "photos/cat.jpg",
        [Match(f"/data/photos/img{i:02d}.jpg", 0.99995 - i * 0.0731) for i in range(12)],
        excluded_self=True,
    ),
    QueryResult("elsewhere/nothing.png", []),
    QueryResult(
        "élan vital/q 1.JPG",
        [Match("/data/ünïcode dir/a b.jpg", -0.25), Match("/data/x.jpg", 0.0), Match("/data/y.jpg", -1e-7)],
    ),
]

MODELS = [
    ModelInfo("resnet50", "cnn", ("image",), 2048, 224, "caffe"),
    ModelInfo("mobilenetv3small", "cnn", ("image",), 576, 224, "builtin"),
    ModelInfo("a-much-longer-model-name", "cnn", ("image",), 12345, 1024, "torch"),
    ModelInfo("joint-small", "siglip", ("image", "text"), 768, 224, "siglip", "ViT-B/16", 812_624_920, True),
    ModelInfo("joint-unknown-size", "siglip", ("image", "text"), 1152, 384, "siglip", None, None, False),
]

REPORT = EvaluationReport(
    kind="labels",
    n_images=1000,
    n_queries=998,
    map=0.734567891,
    precision={1: 0.9, 5: 0.81234, 10: 0.7, 100: 0.412345},
    recall={1: 0.0090909, 5: 0.041, 10: 0.0707, 100: 0.4165},
    ns_score=3.14159,
    per_class=[
        ClassRow("0", "africa", 100, 0.61234, 0.71),
        ClassRow("1", None, 99, 0.5, None),
        ClassRow("10", "a rather long class name", 99, 1.0, 1.0),
        ClassRow("2", "x", 100, 0.0, 0.0),
    ],
    skipped=["images/lonely.jpg", "images/alone.jpg"],
)


def test_results_listing():
    check_golden("results.txt", format_results(RESULTS))
    assert format_results([]) == ""


def test_models_table():
    check_golden("models.txt", format_models(MODELS, Path("/home/me/.cache/cbir/models")))
    lines = format_models(describe_models(Path("/nowhere")), Path("/nowhere")).splitlines()
    note = lines.index(MODELS_NOTE)
    assert [line.split()[0] for line in lines[1:note]] == list(REGISTRY)
    assert [line.split()[0] for line in lines[note + 4 :]] == list(PRESETS)


def test_evaluation_tables():
    check_golden("evaluation.txt", REPORT.format_table())
    check_golden("evaluation-2-classes.txt", REPORT.format_table(max_classes=2))
    bare = EvaluationReport(kind="gt.json", n_images=3, n_queries=2, map=0.5, precision={}, recall={})
    check_golden("evaluation-bare.txt", bare.format_table())


def test_index_summary():
    from cbir.cli.text import format_index_summary
    from cbir.indexing.indexer import IndexReport

    report = IndexReport(
        dataset="photos",
        index_dir="photos/.cbir",
        added=3,
        updated=1,
        removed=2,
        unchanged=40,
        skipped=[{"path": "bad.jpg", "reason": "not a recognised image"}],
        known_bad=1,
        known_bad_files=[{"path": "old/scan.gif", "reason": "not a recognised image"}],
        total=44,
        rebuilt="settings changed",
        ann="hnsw up to date",
        embedded=4,
        seconds=2.0,
    )
    check_golden("index-summary.txt", format_index_summary(report))


def test_duplicates_listing_and_csv():
    from cbir.cli.text import format_duplicates, format_duplicates_csv
    from cbir.duplicates.grouping import DuplicateGroup
    from cbir.service.duplicates import DuplicateOptions, DuplicateReport

    groups = [
        DuplicateGroup("/p/a.jpg", [Match("/p/x/a copy.jpg", 0.99871), Match("/p/a,small.jpg", 0.9512)]),
        DuplicateGroup("/p/b.jpg", [Match("/p/b2.jpg", 0.9333)]),
    ]
    report = DuplicateReport("/p", 120, DuplicateOptions(threshold=0.93), 4, 6, groups)
    check_golden("duplicates.txt", format_duplicates(report) + "\n--\n" + format_duplicates_csv(report))


def action_kind(action: argparse.Action) -> str:
    """What an option does, from argparse's class name: ``_StoreTrueAction`` is ``store_true``."""
    name = type(action).__name__.strip("_").removesuffix("Action")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def options_of(parser: argparse.ArgumentParser) -> str:
    """A parser's options as text that no Python version formats differently (argparse's own help
    layout changed in 3.13): per group, each option's strings, what it does (unless it stores its
    value), metavar, nargs, default, choices and help; then the options that exclude each other."""
    lines = [f"usage prog: {parser.prog}", f"description: {parser.description}"]
    for group in parser._action_groups:  # noqa: SLF001
        lines.append(f"[{group.title}]")
        for action in group._group_actions:  # noqa: SLF001
            if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
                lines.append(f"  commands: {', '.join(action.choices)}")
                continue
            names = ", ".join(action.option_strings) or action.dest
            shown = [names]
            if action_kind(action) != "store":
                shown.append(f"action={action_kind(action)}")
            if action.metavar is not None:
                shown.append(f"metavar={action.metavar}")
            if action.nargs is not None:
                shown.append(f"nargs={action.nargs}")
            if action.default not in (None, argparse.SUPPRESS) and action.option_strings:
                shown.append(f"default={action.default!r}")
            if action.choices is not None:
                shown.append(f"choices={','.join(map(str, action.choices))}")
            if action.required and action.option_strings:
                shown.append("required")
            lines.append("  " + "  ".join(shown))
            if action.help:
                lines.append(f"      {action.help}")
    for exclusive in parser._mutually_exclusive_groups:  # noqa: SLF001
        one = " | ".join(a.option_strings[-1] for a in exclusive._group_actions)  # noqa: SLF001
        lines.append(f"one of{' (required)' if exclusive.required else ''}: {one}")
    if parser.epilog:
        lines.append(f"epilog: {parser.epilog}")
    return "\n".join(lines)


@pytest.mark.parametrize("command", ["index", "query", "evaluate", "duplicates", "models", "serve"])
def test_options(command):
    from cbir.cli.options import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.choices and command in a.choices]  # noqa: SLF001
    check_golden(f"help-{command}.txt", options_of(sub.choices[command]))


def test_legacy_options():
    from cbir.cli.options import build_legacy_parser

    check_golden("help-run_cbir.txt", options_of(build_legacy_parser()))


def test_the_help_pages_are_written_from_those_options(monkeypatch):
    """The text argparse prints holds each option's help (its layout is argparse's, per version)."""
    from cbir.cli.options import build_parser

    monkeypatch.setenv("COLUMNS", "200")
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.choices and "query" in a.choices]  # noqa: SLF001
    page = " ".join(sub.choices["query"].format_help().split())
    for action in sub.choices["query"]._actions:  # noqa: SLF001
        if action.help and action.help != argparse.SUPPRESS:
            assert " ".join(action.help.split()).replace("%%", "%") in page, action.help
