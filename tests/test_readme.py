"""The README's option tables document exactly the options the parsers have (reads README.md only)."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

from cbir.cli.options import build_legacy_parser, build_parser

README = Path(__file__).resolve().parent.parent / "README.md"
NOT_DOCUMENTED = {"-h", "--help"}
TABLE_OPTION = re.compile(r"`(--?[A-Za-z][\w-]*)")


def all_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    main = build_parser()
    found = [("cbir", main), ("run_cbir.py", build_legacy_parser())]
    for action in main._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [(f"cbir {name}", sub) for name, sub in action.choices.items()]
    return found


def parser_options() -> dict[str, set[str]]:
    """Every option string (``--xyz``, ``-k``, ``-dataset``) -> the parsers that have it."""
    options: dict[str, set[str]] = {}
    for name, parser in all_parsers():
        for action in parser._actions:
            for option in action.option_strings:
                if option not in NOT_DOCUMENTED:
                    options.setdefault(option, set()).add(name)
    return options


def table_options() -> set[str]:
    """Every backticked option in a table row of README.md (a line starting with ``|``)."""
    rows = [line for line in README.read_text(encoding="utf-8").splitlines() if line.lstrip().startswith("|")]
    return {m.group(1) for row in rows for m in TABLE_OPTION.finditer(row)}


def canonical(option: str) -> str:
    """``-vv`` (a repeated counting flag) is ``-v``; every other option is itself."""
    if re.fullmatch(r"-([A-Za-z])\1+", option):
        return option[:2]
    return option


def test_all_parsers_are_found() -> None:
    names = {name for name, _ in all_parsers()}
    assert {"cbir index", "cbir query", "cbir evaluate", "cbir models", "run_cbir.py"} <= names


def test_every_option_is_in_an_option_table() -> None:
    # run_cbir.py's aliases (--dataset, --img-query) count too: they are listed beside -dataset, -img_query
    tables = table_options()
    missing = {option: sorted(where) for option, where in parser_options().items() if option not in tables}
    assert not missing, f"options missing from README.md's option tables (as `--option ...`): {missing}"


def test_no_table_lists_an_option_that_does_not_exist() -> None:
    known = set(parser_options())
    unknown = sorted(option for option in table_options() if canonical(option) not in known)
    assert not unknown, f"README.md's option tables list options no parser has: {unknown}"


def test_a_new_option_would_be_caught() -> None:
    parser = build_parser()
    parser.add_argument("--surely-undocumented-option")
    tables = table_options()
    options = {o for a in parser._actions for o in a.option_strings}
    assert "--surely-undocumented-option" in options - tables


def test_every_declared_feature_setting_is_an_option_and_documented() -> None:
    from cbir.encoders.features import FEATURE_SETTINGS, FeatureConfig

    fields = {f.name for f in dataclasses.fields(FeatureConfig)}
    tables, options = table_options(), parser_options()
    for setting in FEATURE_SETTINGS:
        assert setting.name in fields, setting  # a setting is a recorded field of the features
        assert setting.flag in options and {"cbir index", "cbir query"} <= options[setting.flag], setting
        assert setting.flag in tables, f"{setting.flag} is missing from README.md's option tables"
