"""Issue 27 items 14 and 15: every option is checked against its real range when the command line is
parsed, so a bad value is one line naming the option, exit 2, before any model or file is made."""

from __future__ import annotations

import pytest
from conftest import save_image
from helpers import TINY_MODEL, logging_restored

from cbir.cli.main import legacy_main, main


@pytest.fixture(autouse=True)
def in_process():
    """``main`` is run in this process: leave logging as it was."""
    with logging_restored():
        yield


@pytest.fixture
def data(tmp_path):
    for i in range(2):
        save_image(tmp_path / "data" / f"{i}.jpg", seed=i)
    return tmp_path / "data"


BAD = [
    ("--gem-p", "inf"),
    ("--gem-p", "nan"),
    ("--gem-p", "-inf"),
    ("--gem-p", "1e400"),
    ("--gem-p", "0"),
    ("--gem-p", "100"),
    ("--scales", "100"),
    ("--scales", "1,inf"),
    ("--scales", "1,nan"),
    ("--scales", "0"),
    ("--size", "100000"),
    ("--size", "31"),
    ("--batch-size", "0"),
    ("--batch-size", "1e9"),
    ("--workers", "100000"),
    ("--max-file-mb", "inf"),
    ("--max-file-mb", "1e300"),
    ("--max-pixels", "0"),
    ("--whiten-power", "inf"),
    ("--whiten-dim", "0"),
    ("--checkpoint-every", "-1"),
    ("--store", "milvus://localhost:notaport"),
    ("--store", "milvus://localhost:99999"),
    ("--store", "milvus://localhost:0"),
    ("--store", "milvus://:19530"),
    ("--store", "milvus://[::1"),
    ("--store", "postgres://x"),
]


@pytest.mark.parametrize("option, value", BAD)
def test_a_bad_value_is_one_line_naming_the_option_before_anything_is_made(data, capsys, option, value):
    code = main(["index", str(data), *TINY_MODEL, option, value])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cbir: error: cbir index: argument " + option)
    assert sorted(p.name for p in data.iterdir()) == ["0.jpg", "1.jpg"]  # no index folder, no part-*.npy


QUERY_BAD = [
    ("-k", "0"),
    ("-k", "100000"),
    ("--qe", "1e6"),
    ("--dba", "5000"),
    ("--mutual", "-1"),
    ("--alpha", "inf"),
    ("--alpha", "1000"),
    ("--rerank-threshold", "nan"),
    ("--rerank-threshold", "2"),
    ("--since", "2020-13-01"),
]


@pytest.mark.parametrize("option, value", QUERY_BAD)
def test_query_and_run_cbir_options(data, capsys, option, value):
    for run, argv in (
        (main, ["query", str(data), str(data / "0.jpg"), *TINY_MODEL]),
        (legacy_main, ["-dataset", str(data), "-img_query", str(data / "0.jpg"), *TINY_MODEL]),
    ):
        assert run([*argv, option, value]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "argument " in err[0] and option in err[0]
    assert sorted(p.name for p in data.iterdir()) == ["0.jpg", "1.jpg"]


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "DATA", "--port", "65536"],
        ["serve", "DATA", "--port", "-1"],
        ["serve", "DATA", "--max-upload-mb", "inf"],
        ["serve", "DATA", "--max-upload-mb", "1e12"],
        ["duplicates", "DATA", "--threshold", "inf"],
        ["duplicates", "DATA", "--plot-groups", "0"],
        ["duplicates", "DATA", "--store", "milvus://h:x"],
        ["duplicates", "DATA", "--move-to", ""],  # not the current folder
        ["duplicates", "--undo", ""],
        ["evaluate", "DATA", "--alpha", "nan"],
        ["query", "DATA", "--text", ""],
        ["query", "DATA", "--text", " \t "],
        ["query", "DATA", "--text", "dog " * 51],  # 204 characters: the web API's limit too
    ],
)
def test_other_commands(data, capsys, argv):
    argv = [str(data) if a == "DATA" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and argv[-2] in err[0]


def test_scales_are_checked_with_the_input_size_they_multiply(data, capsys):
    """``--scales 4`` is fine at 224 px, not with ``--size 1024``; without ``--size`` the backbone's."""
    assert main(["index", str(data), *TINY_MODEL, "--size", "1024", "--scales", "1,4"]) == 2
    assert "4096 px a side; at most 2048" in capsys.readouterr().err
    assert main(["index", str(data), "--model", "resnet50", "--scales", "10"]) == 2
    assert "--scales: 10 times the input size 224" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name", ["new\nline", "carriage\rreturn", "next\x85line", "sep\u2028arator", "esc\x1b[2J"]
)
def test_an_error_quoting_a_name_with_a_line_break_is_still_one_line(tmp_path, capsys, name):
    """Found by the property tests: a dataset name with a line break made the error two lines."""
    assert main(["index", str(tmp_path / name), *TINY_MODEL]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("cbir: error: ") and "\x1b" not in err
