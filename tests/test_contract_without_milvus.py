"""The store contract without the milvus extra: the folder store's cases run and pass, the Milvus
Lite and Milvus server cases are skipped with the reason. pytest runs tests/test_store_contract.py in
a subprocess where ``import pymilvus`` and ``import milvus_lite`` raise ImportError."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

from helpers import REPO

HIDE_MILVUS = """
import sys

class NoMilvus:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("pymilvus", "milvus_lite"):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")
        return None

sys.meta_path.insert(0, NoMilvus())
for name in ("pymilvus", "milvus_lite"):
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        sys.exit(f"{name} is still importable")

import pytest

sys.exit(pytest.main(sys.argv[1:]))
"""


def test_the_folder_store_contract_runs_without_pymilvus(tmp_path):
    report = tmp_path / "report.xml"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            HIDE_MILVUS,
            "tests/test_store_contract.py",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
        ],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cases = {case.get("name"): case for case in ET.parse(report).iter("testcase")}
    folder = [name for name in cases if "[folder" in name]
    milvus = [name for name in cases if "[milvus-" in name]  # Milvus Lite and the real server
    assert 2 * len(folder) == len(milvus) >= 16 and len(cases) == 3 * len(folder)
    for name in folder:
        assert len(cases[name]) == 0, name  # no failure, error or skipped element: passed
    for name in milvus:
        (skipped,) = cases[name]
        assert skipped.tag == "skipped" and "the milvus extra is not installed" in skipped.get("message", "")
