"""Issue 27, "Logging": cbir's records and every library's go through one handler; at the default
verbosity only cbir's own lines reach the terminal, from ``-v`` on a library's warnings (one line each,
named by the library)."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import pytest
from helpers import REPO, logging_restored, together

from cbir.core.quiet import adopt_library_logs, route_logs


@pytest.fixture
def restore_logging():
    with logging_restored():
        yield


def a_library_with_its_own_handler(name: str) -> logging.Logger:
    """What pymilvus and Ray do on import: a handler of their own, not propagating."""
    logger = logging.getLogger(name)
    logger.addHandler(logging.StreamHandler(sys.stderr))
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_default_verbosity_shows_only_cbirs_lines(restore_logging, capsys):
    library = a_library_with_its_own_handler("pymilvus.test_child")
    route_logs(0)
    library.error("pymilvus says something went wrong\nTraceback (most recent call last):")
    logging.getLogger("tensorflow").warning("a TensorFlow warning")
    logging.getLogger("uvicorn.error").error("uvicorn's error")
    logging.getLogger("some.other.library").warning("another library")
    warnings.warn("a deprecation somewhere", DeprecationWarning, stacklevel=1)
    logging.getLogger("cbir.duplicates.moves").warning("not moved: x.jpg")
    logging.getLogger("cbir.indexing").info("an info line")
    assert capsys.readouterr().err == "cbir: WARNING: not moved: x.jpg\n"


def test_verbose_shows_library_warnings_one_line_each(restore_logging, capsys):
    library = a_library_with_its_own_handler("ray.test_child")
    route_logs(1)
    library.error("Ray failed\nwith a second line")
    library.info("Ray's chatter")
    logging.getLogger("cbir.indexing").info("an info line")
    assert capsys.readouterr().err == "cbir: ERROR: [ray] Ray failed\ncbir: INFO: an info line\n"
    route_logs(2)  # again: one handler, not two
    library.info("Ray's chatter")
    assert capsys.readouterr().err == "cbir: INFO: [ray] Ray's chatter\n"


def test_a_library_that_installs_its_handler_later_is_taken_back(restore_logging, capsys):
    route_logs(0)
    library = a_library_with_its_own_handler("ray.later")  # as ray.init does
    adopt_library_logs()
    library.error("late")
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_the_real_libraries_say_nothing_at_the_default_verbosity():
    """pymilvus, milvus-lite, Ray, TensorFlow, uvicorn and python-multipart, imported after the
    routing (as cbir imports them, on first use), each made to log an error."""
    script = """
import logging, sys
from cbir.core.quiet import adopt_library_logs, native_stderr_silenced, route_logs
route_logs(int(sys.argv[1]))
import pymilvus, milvus_lite.server_manager, ray, uvicorn, python_multipart
with native_stderr_silenced():  # TensorFlow's C++ start-up, as the command line imports it
    import tensorflow as tf
adopt_library_logs()  # what cbir does after importing pymilvus, and after ray.init
for name in ("pymilvus", "milvus_lite.server_manager", "ray", "uvicorn.error", "python_multipart"):
    logging.getLogger(name).error("ERROR-FROM-" + name)
tf.get_logger().error("ERROR-FROM-tensorflow")
logging.getLogger("cbir.test").warning("cbir's own")
"""
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"}
    quiet, loud = together([sys.executable, "-c", script, "0"], [sys.executable, "-c", script, "1"], env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "cbir: WARNING: cbir's own\n" and quiet.stdout == ""
    for library in ("pymilvus", "milvus_lite", "ray", "uvicorn", "python_multipart", "tensorflow"):
        assert f"cbir: ERROR: [{library}] ERROR-FROM-" in loud.stderr


@pytest.mark.slow
def test_a_milvus_lite_file_held_by_another_process_is_one_line(tmp_path):
    """Issue 27 item 7's leak: milvus-lite's traceback and pymilvus' ERROR lines stay off the terminal."""
    pytest.importorskip("milvus_lite")
    from pymilvus import MilvusClient

    holder = MilvusClient(str(tmp_path / "held.db"))  # this process holds the file now
    try:
        (tmp_path / "data").mkdir()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "cbir",
                "duplicates",
                str(tmp_path / "data"),
                "--store",
                f"milvus:{tmp_path}/held.db",
            ],
            capture_output=True,
            text=True,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        )
    finally:
        holder.close()
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("cbir: error: ")
    assert "Traceback" not in proc.stderr
