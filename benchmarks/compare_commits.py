#!/usr/bin/env python3
"""Run one benchmark on an older commit and on this working tree, alternately, in one session.

A git worktree of ``--base`` is made in a temporary folder (with ``../shared`` linked beside it, so
both trees find the same data); the benchmark script of each tree runs with that tree's own code
(each script puts its repository first on ``sys.path``). Runs alternate
(base, head, base, head, ...) so that the machine's drift hits both alike. Every run's output is
printed whole, labelled, for the reader to compare figure by figure.

    python3 benchmarks/compare_commits.py --base 90e3f7b --rounds 2 -- bench_query.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the commit to compare with")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("script", help="a script of benchmarks/, e.g. bench_query.py")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    args = ap.parse_args()
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    with tempfile.TemporaryDirectory(prefix="cbir-base-") as tmp:
        base_tree = Path(tmp) / "base"
        shared = ROOT.parent / "shared"
        if shared.exists():  # the benchmarks find their data in ../shared, beside each tree
            (Path(tmp) / "shared").symlink_to(shared, target_is_directory=True)
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base_tree), args.base], check=True
        )
        try:
            trees = [(f"base {args.base}", base_tree), (f"head {head.stdout.strip()} + working tree", ROOT)]
            for round_no in range(1, args.rounds + 1):
                for label, tree in trees:
                    print(f"\n===== round {round_no}: {label} =====", flush=True)
                    env = dict(os.environ, PYTHONPATH=str(tree))
                    script = tree / "benchmarks" / args.script
                    subprocess.run([sys.executable, str(script), *args.args], env=env, cwd=tree, check=True)
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], check=False
            )


if __name__ == "__main__":
    main()
