"""Milvus Lite's own failures are one line each, exit 2, and its tracebacks never reach the terminal
(issue 27, item 7): a ``.db`` held by another process, a ``.db`` that is a regular file, a full disk.
"""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest
from conftest import save_image
from helpers import REPO
from pixelcli import MODEL, pixel_family, run

pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
pytest.importorskip("milvus_lite", reason="the milvus extra is not installed")

HOLD = """
import sys
from cbir.stores.milvus.client import connect, parse_milvus_uri
connect(parse_milvus_uri(sys.argv[1]))
print("ready", flush=True)
sys.stdin.read()  # held until the test closes our stdin
"""


def one_line(ran, *words: str) -> None:
    assert ran.code == 2, (ran.code, ran.out, ran.err)
    lines = ran.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cbir: error: "), ran.err
    assert "Traceback" not in ran.err
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture
def data(tmp_path):
    for i in range(3):
        save_image(tmp_path / "data" / f"{i}.png", seed=i)
    with pixel_family():
        yield tmp_path / "data"


def test_a_database_held_by_another_process_is_one_line(tmp_path, data):
    db = tmp_path / "held.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, f"milvus:{db}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        for ran in (
            run("index", data, *MODEL, "--store", f"milvus:{db}"),
            run("query", data, "--like", "0.png", "--no-plot", *MODEL, "--store", f"milvus:{db}"),
        ):
            one_line(ran, "in use by another process", "use a Milvus server for concurrent access")
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)
    assert run("index", data, *MODEL, "--store", f"milvus:{db}").code == 0  # free again


def test_a_database_that_is_a_regular_file_is_one_line_and_kept(tmp_path, data):
    db = tmp_path / "notes.db"
    db.write_text("my notes, not a database")
    one_line(run("index", data, *MODEL, "--store", f"milvus:{db}"), "not a Milvus Lite database")
    assert db.read_text() == "my notes, not a database"


def test_a_full_disk_at_start_is_one_line(tmp_path, data, monkeypatch):
    from milvus_lite.adapter.grpc import server

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(server, "start_server_in_thread", full)
    one_line(run("index", data, *MODEL, "--store", f"milvus:{tmp_path / 'full.db'}"), "no space left")


def test_engine_records_are_debug_lines_of_cbir_shown_with_vv(tmp_path, data):
    db = tmp_path / "notes.db"
    db.write_text("not a database")
    quiet = run("index", data, *MODEL, "--store", f"milvus:{db}")
    assert "milvus_lite" not in quiet.err
    loud = run("index", data, *MODEL, "--store", f"milvus:{db}", "-vv")
    assert "cbir: DEBUG: milvus_lite.server_manager: Failed to start MilvusLite server" in loud.err
    assert loud.code == 2 and loud.err.rstrip().endswith(
        "not a Milvus Lite database (it is a regular file); name another .db"
    )
