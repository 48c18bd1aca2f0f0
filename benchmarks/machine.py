"""Shared helpers for the benchmarks: what machine and versions produced the figures."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"


def version(package: str) -> str:
    """The installed version of ``package`` (its distribution name), or ``not installed``."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe() -> str:
    """One line per fact: CPU, cores, memory, Python and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 2**20:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    import numpy as np

    lines = [
        f"machine: {cpu}, {os.cpu_count()} cores, {mem}",
        f"python {sys.version.split()[0]}, numpy {np.__version__}",
    ]
    try:
        import keras
        import tensorflow as tf

        lines.append(f"tensorflow {tf.__version__}, keras {keras.__version__}")
    except ImportError:
        pass
    return "\n".join(lines)
