"""``bench_serve.py --attack`` (issue 21): a burst of hostile uploads against ``cbir serve``, on
loopback, bounded in time; this tree's server and (``--base COMMIT``) the same server at an older
commit, on the same index in the same run.

On a 1,000-image index (synthetic rows, plus one real photo each server indexes at start): idle
RSS after warm-up; a normal client uploading a 640x480 JPEG one query after another, quiet
(``--quiet`` uploads); then for ``--burst`` seconds 8 attackers each uploading a 15000x15000
one-colour PNG (218 KB) and 8 each a JPEG whose header claims 250 megapixels (under the indexing
guard), one upload after another, while the normal client goes on (the attackers in a process of
their own, 16 threads); then 10 s of rest and the normal client again. Printed: peak RSS above
idle (``VmHWM``, reset before the burst, and a 10 ms sampler), RSS 10 s after the burst, the normal
client's p50/p95 quiet, during and after, and every status the attackers and the client got.
Targets: peak <= idle + 600 MB, back within 100 MB of idle, normal p50 during <= 3x quiet p50, no
5xx but the documented 503.
"""

from __future__ import annotations

import http.client
import io
import json
import multiprocessing
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
MB = 2**20


def flat_png(width: int, height: int) -> bytes:
    """A one-colour greyscale PNG of any size (a few hundred KB), made without holding its pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\x00" + b"\x80" * width
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def claimed_jpeg(width: int, height: int) -> bytes:
    """A small JPEG whose frame header claims ``width`` x ``height`` pixels."""
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 120, 150)).save(out, "JPEG")
    data = bytearray(out.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def multipart(data: bytes, name: str) -> tuple[bytes, str]:
    boundary = "cbirattackboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(port: int, body: bytes, kind: str, conn: http.client.HTTPConnection | None = None) -> int:
    """One upload (a new connection unless ``conn``); its status, 0 when the connection failed."""
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        c.request("POST", "/api/search?k=9", body=body, headers={"Content-Type": kind})
        response = c.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        if conn is None:
            c.close()


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


@contextmanager
def sampled(pid: int, every: float = 0.01):  # noqa: ANN201
    """The highest RSS of ``pid`` seen while the block runs (a list holding one float)."""
    peak = [rss_mb(pid)]
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every):
            try:
                peak[0] = max(peak[0], rss_mb(pid))
            except (OSError, RuntimeError):
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


@dataclass
class Figures:
    label: str
    idle: float = 0.0
    peak: float = 0.0
    after: float = 0.0
    quiet: list[float] = field(default_factory=list)
    during: list[float] = field(default_factory=list)
    later: list[float] = field(default_factory=list)
    attackers: Counter[int] = field(default_factory=Counter)
    normal: Counter[int] = field(default_factory=Counter)

    def p(self, times: list[float], q: float) -> float:
        return float(np.percentile(times, q)) * 1000 if times else float("nan")

    def bad_5xx(self) -> int:
        return sum(n for s, n in (self.attackers + self.normal).items() if s >= 500 and s != 503 or s == 0)


def normal_uploads(port: int, body: bytes, kind: str, figures: Figures, out: list[float], until) -> None:  # noqa: ANN001
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    while not until():
        t0 = time.perf_counter()
        status = post(port, body, kind, conn)
        if status == 0:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        figures.normal[status] += 1
        if status == 200:
            out.append(time.perf_counter() - t0)


def start(tree: Path, ds: Path, features: list[str]) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, PYTHONPATH=str(tree), TF_CPP_MIN_LOG_LEVEL="3")
    server = subprocess.Popen(
        [sys.executable, "-m", "cbir", "serve", str(ds), "--host", "127.0.0.1", "--port", "0", *features],
        env=env,
        cwd=tree,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = server.stdout.readline()
    if not line:
        raise SystemExit(f"the server of {tree} did not start: {server.stderr.read()[-2000:]}")
    port = int(line.rsplit(":", 1)[1].split("/")[0])
    while True:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("GET", "/api/info")
        info = json.loads(c.getresponse().read())
        c.close()
        if info["ready"] and info["indexing"]["state"] == "idle":
            return server, port
        time.sleep(0.2)


def attack(tree: Path, label: str, ds: Path, features: list[str], burst: float, quiet: int) -> Figures:
    """One server of ``tree`` through the quiet, burst and after phases."""
    figures = Figures(label)
    normal_body, normal_kind = multipart(photo(), "normal.jpg")
    png = multipart(flat_png(15000, 15000), "flat.png")
    jpeg = multipart(claimed_jpeg(15800, 15800), "claims-250mp.jpg")
    # one new real photo, which the server indexes at start as a real server decodes images (the
    # indexing guard then also raises Pillow's own bomb limit from 179 to 250 megapixels)
    (ds / "real.jpg").write_bytes(photo(sum(label.encode())))
    server, port = start(tree, ds, features)
    try:
        for _ in range(5):  # warm-up
            post(port, normal_body, normal_kind)
        time.sleep(2)
        figures.idle = rss_mb(server.pid)
        count = [0]

        def quiet_done() -> bool:
            count[0] += 1
            return count[0] > quiet

        normal_uploads(port, normal_body, normal_kind, figures, figures.quiet, quiet_done)
        # the attackers in a process of their own (as a browser would be): they do not take the
        # normal client's interpreter lock, only the machine's cores
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            pool.submit(int).result()  # started before the clock
            Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # VmHWM from here
            stop = time.monotonic() + burst
            with sampled(server.pid) as peak:
                attackers = pool.submit(hammer, port, [png, jpeg], 8, stop)
                normal_uploads(
                    port, normal_body, normal_kind, figures, figures.during, lambda: time.monotonic() > stop
                )
                figures.attackers.update(attackers.result())
        figures.peak = max(peak[0], rss_mb(server.pid, "VmHWM"))
        time.sleep(10)
        figures.after = rss_mb(server.pid)
        count[0] = 0
        normal_uploads(port, normal_body, normal_kind, figures, figures.later, quiet_done)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    return figures


def hammer(port: int, uploads: list[tuple[bytes, str]], each: int, stop: float) -> Counter[int]:
    """``each`` threads per upload posting it over and over until ``stop`` (monotonic, shared by
    the processes of this machine); the statuses they got."""
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def run(body: bytes, kind: str) -> None:
        while time.monotonic() < stop:
            status = post(port, body, kind)
            with lock:
                statuses[status] += 1

    threads = [threading.Thread(target=run, args=u) for u in uploads for _ in range(each)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def photo(seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    out = io.BytesIO()
    coarse.resize((640, 480), Image.Resampling.BICUBIC).save(out, "JPEG", quality=90)
    return out.getvalue()


@contextmanager
def worktree(commit: str):  # noqa: ANN201
    """A checkout of ``commit`` in a temporary folder (removed afterwards)."""
    tmp = Path(tempfile.mkdtemp(prefix="cbir-attack-base-"))
    tree = tmp / "base"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), commit],
        check=True,
        capture_output=True,
    )
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def report(runs: list[Figures]) -> None:
    print(
        "\nserver                  idle RSS  peak above idle  10 s after (above idle)  "
        "normal p50/p95 quiet  during  after           attackers' statuses  normal's"
    )
    for f in runs:
        print(
            f"{f.label:22s} {f.idle:7.0f} MB  {f.peak - f.idle:+10.0f} MB  {f.after:10.0f} MB "
            f"({f.after - f.idle:+5.0f})"
            f"   {f.p(f.quiet, 50):6.1f}/{f.p(f.quiet, 95):6.1f} ms  {f.p(f.during, 50):6.1f}/"
            f"{f.p(f.during, 95):6.1f}  {f.p(f.later, 50):6.1f}/{f.p(f.later, 95):6.1f} ms"
            f"   {dict(sorted(f.attackers.items()))}  {dict(sorted(f.normal.items()))}"
        )
    head = runs[-1]
    up, left = head.peak - head.idle, head.after - head.idle
    checks = [
        (f"peak <= idle + 600 MB ({up:+.0f} MB)", up <= 600),
        (f"back within 100 MB of idle 10 s after ({left:+.0f} MB)", left <= 100),
        (
            f"normal p50 during <= 3x quiet p50 ({head.p(head.during, 50) / head.p(head.quiet, 50):.2f}x)",
            head.p(head.during, 50) <= 3 * head.p(head.quiet, 50),
        ),
        (f"no 5xx but the documented 503 ({head.bad_5xx()} others)", head.bad_5xx() == 0),
    ]
    print(f"\ntargets ({head.label}):")
    for text, ok in checks:
        print(f"  {text}: {'met' if ok else 'MISSED'}")
    if len(runs) > 1:
        base = runs[0]
        print(
            f"\n{head.label} / {base.label}: peak above idle "
            f"{(head.peak - head.idle) / max(1, base.peak - base.idle):.3f}x, "
            f"normal p50 during {head.p(head.during, 50) / base.p(base.during, 50):.3f}x, "
            f"attacker uploads answered {sum(head.attackers.values())} vs {sum(base.attackers.values())}"
        )


def run_attack(ds: Path, features: list[str], burst: float, quiet: int, base: str | None) -> None:
    runs = []
    if base is not None:
        with worktree(base) as tree:
            runs.append(attack(tree, f"base {base}", ds, features, burst, quiet))
    git = ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]
    head = subprocess.run(git, capture_output=True, text=True)
    runs.append(attack(REPO, f"head {head.stdout.strip()}+tree", ds, features, burst, quiet))
    report(runs)
