"""Issue 27 item 17: Ctrl-C at any moment is one line and exit status 130, never a traceback; from the
first imports (NumPy's, while the command line is still being loaded), through TensorFlow's, to a
running watch. Each point is reached by waiting for an event of the child (a library mapped into its
memory, a line it printed), not by sleeping."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import save_image
from helpers import REPO, TINY_MODEL, interruptible

from cbir.cli.main import INTERRUPTED


def start(*args: object, cwd: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="Agg")
    return subprocess.Popen(
        [sys.executable, "-m", "cbir", *map(str, args)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )


def mapped(proc: subprocess.Popen[str], library: str, limit: float = 120) -> None:
    """Wait until the child has loaded ``library`` (a shared object named in /proc/PID/maps)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if library in Path(f"/proc/{proc.pid}/maps").read_text():
                return
        except OSError:
            pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.0005)
    pytest.fail(f"{library} never loaded")


def interrupted(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.endswith(INTERRUPTED + "\n"), err
    return out, err


@pytest.fixture
def data(tmp_path):
    for i in range(3):
        save_image(tmp_path / "data" / f"{i}.jpg", seed=i)
    return tmp_path / "data"


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
@pytest.mark.parametrize(
    "library", ["_multiarray_umath", pytest.param("libtensorflow_framework", marks=pytest.mark.slow)]
)
def test_ctrl_c_while_importing_is_one_line(data, tmp_path, library):
    proc = start("index", data, *TINY_MODEL, "--watch", cwd=tmp_path)
    mapped(proc, library)
    out, err = interrupted(proc)
    assert err == INTERRUPTED + "\n" and out == ""


@pytest.mark.slow
def test_ctrl_c_while_watching_is_one_line(data, tmp_path):
    proc = start("index", data, *TINY_MODEL, "--watch", "--json", cwd=tmp_path)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert line.startswith("watching "), line
    out, err = interrupted(proc)
    assert err == INTERRUPTED + "\n"  # after the "watching" line read above
    assert json.loads(out)["total"] == 3  # the work done before Ctrl-C was reported and kept
