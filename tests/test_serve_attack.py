"""`cbir serve`'s memory under a burst of hostile uploads (issue 21), on a real server process,
measured by its RSS (``VmHWM``, the peak, reset before the burst) with a generous margin: the
benchmark (``bench_serve.py --attack``) holds the 600 MB target, this test the order of magnitude
(before the fix, one 15000x15000 PNG cost 1.3 GB)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import save_image
from helpers import TINY_MODEL, claimed_jpeg, flat_png, running_cli

pytest.importorskip("fastapi", reason="cbir serve needs the web extra (pip install 'cbir[web]')")
pytestmark = pytest.mark.slow  # runs `cbir serve` in a subprocess

MARGIN_MB = 1000  # the benchmark's target is 600 MB; before the fix the burst took several GB


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field}")


def upload(port: int, data: bytes, name: str) -> int:
    boundary = "testboundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n'.encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(
            "POST", "/api/search?k=3", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def info(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/api/info")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc")
def test_a_burst_of_pixel_bombs_stays_within_the_memory_bound(tmp_path):
    ds = tmp_path / "photos"
    for i in range(6):
        save_image(ds / f"p{i}.jpg", seed=i)
    with running_cli("serve", ds, "--port", "0", *TINY_MODEL) as (proc, lines):
        port = int(lines.get(timeout=120).rsplit(":", 1)[1].split("/")[0])
        deadline = time.monotonic() + 180
        while not (info(port)["ready"] and info(port)["indexing"]["state"] == "idle"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        normal = (ds / "p1.jpg").read_bytes()
        assert upload(port, normal, "p1.jpg") == 200  # warm
        idle = rss_mb(proc.pid)
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # the peak (VmHWM) from here
        attacks = [(flat_png(15000, 15000), "flat.png")] * 8 + [(claimed_jpeg(15800, 15800), "big.jpg")] * 8
        attacks += [(flat_png(7000, 5500), "under-the-cap.png")] * 4  # 38.5 MP: decoded, reduced
        attacks += [(normal, "p1.jpg")] * 4
        statuses: Counter[int] = Counter()
        lock = threading.Lock()

        def send(data: bytes, name: str) -> None:
            status = upload(port, data, name)
            with lock:
                statuses[(name, status)] += 1

        threads = [threading.Thread(target=send, args=a) for a in attacks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        peak = rss_mb(proc.pid, "VmHWM") - idle
        left = rss_mb(proc.pid) - idle
        assert peak < MARGIN_MB, f"the burst took {peak:.0f} MB above idle"
        assert left < 200, f"{left:.0f} MB still held after the burst"
        assert statuses[("flat.png", 400)] + statuses[("flat.png", 503)] == 8, statuses
        assert statuses[("big.jpg", 400)] + statuses[("big.jpg", 503)] == 8, statuses
        assert {s for (_, s) in statuses} <= {200, 400, 503}, statuses
        assert statuses[("under-the-cap.png", 200)] + statuses[("under-the-cap.png", 503)] == 4, statuses
        assert upload(port, normal, "p1.jpg") == 200
