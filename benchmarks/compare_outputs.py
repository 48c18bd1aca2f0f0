#!/usr/bin/env python3
"""Every command's output on an older commit and on this working tree, compared byte for byte.

A git worktree of ``--base`` is made in a temporary folder. The base builds an index (folder store
and Milvus Lite) of a copy of the sample ``dataset/`` with a real MobileNet from ``../shared``; then
each command below runs once with the base's code and once with this tree's, on that same index
(so this tree also reads an index folder and a collection written by the base). Prints SAME or the
diff for each command: a restructuring must show SAME everywhere but where it adds a field.

    python3 benchmarks/compare_outputs.py --base 6db8ca5
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenet_2_5_224_tf_no_top.h5"


def commands(ds: Path, db: Path) -> list[list[str]]:
    """The commands compared (``{tree}`` is replaced by each tree's root)."""
    q = str(ds / "astronaut_a.jpg")
    store = ["--store", f"milvus:{db}"]
    return [
        ["index", str(ds), "--json"],
        ["index", str(ds)],
        ["index", str(ds), *store, "--json"],
        ["query", str(ds), q, "-k", "5", "--no-plot"],
        ["query", str(ds), q, "-k", "5", "--no-plot", "--json"],
        ["query", str(ds), q, "-k", "5", "--no-plot", "--json", *store],
        ["query", str(ds), "--like", "astronaut_a.jpg", "-k", "5", "--no-plot", "--csv"],
        ["query", str(ds), "--like", "astronaut_a.jpg", "-k", "5", "--no-plot", "--under", "x"],
        ["query", str(ds), "--like", "nope.jpg", "--no-plot"],
        ["duplicates", str(ds), "--no-plot"],
        ["duplicates", str(ds), "--no-plot", "--json"],
        ["duplicates", str(ds), "--no-plot", "--csv", *store],
        ["models"],
        ["models", "--json"],
        *[[cmd, "--help"] for cmd in ("index", "query", "serve", "evaluate", "duplicates", "models")],
        ["--help"],
    ]


TIMINGS = re.compile(r'("(?:seconds|images_per_second)": )[0-9.]+|( in )[0-9.]+( s)')


def run(tree: Path, args: list[str], env: dict[str, str]) -> str:
    """The command's exit status and output, its timings masked (they differ run to run)."""
    done = subprocess.run(
        [sys.executable, "-m", "cbir", *args],
        cwd=tree,
        env={**env, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    return TIMINGS.sub(r"\1\2#\3", f"exit {done.returncode}\n{done.stdout}{done.stderr}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the commit to compare with")
    args = ap.parse_args()
    if not WEIGHTS.exists():
        sys.exit(f"needs the MobileNet weights in {WEIGHTS}")
    with tempfile.TemporaryDirectory(prefix="cbir-outputs-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.base], check=True
        )
        try:
            ds, db = Path(tmp) / "ds", Path(tmp) / "m.db"
            shutil.copytree(ROOT / "dataset", ds)
            env = dict(os.environ, CBIR_MODEL_CACHE=str(Path(tmp) / "models"), TF_CPP_MIN_LOG_LEVEL="3")
            for store in ([], ["--store", f"milvus:{db}"]):  # the base writes both indexes
                built = ["index", str(ds), "--model", "mobilenet", "--weights", str(WEIGHTS), *store]
                print(run(base, built, env).splitlines()[0], "base:", " ".join(built[2:]))
            same = 0
            for cmd in commands(ds, db):
                old, new = run(base, cmd, env), run(ROOT, cmd, env)
                if old == new:
                    same += 1
                    print("SAME", " ".join(cmd))
                else:
                    print("DIFF", " ".join(cmd))
                    print(
                        "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), n=1))[:3000]
                    )
            print(f"{same} of {len(commands(ds, db))} commands print the same")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)


if __name__ == "__main__":
    main()
