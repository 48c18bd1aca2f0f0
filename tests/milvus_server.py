"""A real Milvus server for the tests: the standalone server binary of PyPI's ``milvus`` package
("embedded Milvus": the Go server with its embedded etcd and local storage), started with the
package's ``milvus-server`` script on free ports of 127.0.0.1 with its own data folder.

The script would take the fixed default ports (19530, 2379, ...) or the next free ones above them;
every port is chosen here instead (free ones, asked of the kernel) and passed with the script's own
options, and the server is ready when a client's call succeeds on the chosen port (polled, with the
process watched). ``kill()`` is ``kill -9`` of the script and the server under it (their process
group); ``start()`` again brings the same server back on the same ports and data folder.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

# the script's port options and the keys of its config file they set: the script checks each port
# with a plain bind and silently takes the next one when that fails (as it does for a port of a killed
# server whose connections are in TIME_WAIT), so each is also pinned with --extra-config
PORTS = {
    "proxy-port": "proxy.port",
    "proxy-internal-port": "proxy.internalPort",
    "etcd-port": "etcd.endpoints",
    "root-coord-port": "rootCoord.port",
    "query-coord-port": "queryCoord.port",
    "query-node-port": "queryNode.port",
    "index-coord-port": "indexCoord.bindIndexNodeMode.address",
    "index-node-port": "indexNode.port",
    "data-coord-port": "dataCoord.port",
    "data-node-port": "dataNode.port",
}
SESSION_TTL = 4  # seconds
START_TIMEOUT = 180.0  # seconds: the first start unpacks ~100 MB of binaries; about 5 s here after


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports of 127.0.0.1 that are free now (held together while asked for)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def why_not() -> str | None:
    """Why no server can be started here (None: it can)."""
    if shutil.which("milvus-server") is None:
        return "PyPI's milvus package (its milvus-server script) is not installed: see requirements-dev.txt"
    try:
        import pymilvus  # noqa: F401
    except ImportError:
        return "the milvus extra is not installed (pymilvus)"
    return None


def group_members(pgid: int) -> list[int]:
    """The processes of process group ``pgid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[2] == str(pgid):
                found.append(int(entry.name))
    return found


class MilvusServer:
    """One Milvus standalone server in ``data`` (see the module docstring)."""

    def __init__(self, data: Path) -> None:
        self.data = data
        ports = free_ports(len(PORTS) + 1)
        self.ports = dict(zip(PORTS, ports))
        self.etcd_peer_port = ports[-1]
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def port(self) -> int:
        return self.ports["proxy-port"]

    @property
    def uri(self) -> str:
        """The address in cbir's form: ``milvus://127.0.0.1:PORT`` (add ``/COLLECTION``)."""
        return f"milvus://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and return once it answers; RuntimeError (with its log's tail) if it
        exits or does not answer within START_TIMEOUT."""
        assert self.proc is None, "already running"
        self.data.mkdir(parents=True, exist_ok=True)
        etcd = f"http://127.0.0.1:{self.ports['etcd-port']}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        etcd_config = self.data / "embedEtcd.yaml"  # the embedded etcd's own ports (else 2379, 2380)
        etcd_config.write_text(
            f"listen-client-urls: {etcd}\nadvertise-client-urls: {etcd}\n"
            f"listen-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\n"
            f"initial-cluster: default={peer}\n"
        )
        env = {**os.environ, "ETCD_USE_EMBED": "true", "ETCD_CONFIG_PATH": str(etcd_config)}
        # sessions of a killed server expire after this ttl (30 s by default): a restart waits that long
        args = ["milvus-server", "--data", str(self.data)]
        args += ["--extra-config", f"common.session.ttl={SESSION_TTL}"]
        for option, port in self.ports.items():
            value = f"localhost:{port}" if option in ("etcd-port", "index-coord-port") else str(port)
            args += [f"--{option}", str(port), "--extra-config", f"{PORTS[option]}={value}"]
        self.starts += 1
        log = open(self.data / f"script-{self.starts}.log", "wb")  # noqa: SIM115 - kept for the process
        with log:
            self.proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self.answers():
            try:
                code = self.proc.wait(timeout=0.25)  # the pause between two polls, watching the process
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    self.kill()
                    why = f"the Milvus server did not answer in {START_TIMEOUT:.0f} s{self.tail()}"
                    raise RuntimeError(why) from None
                continue
            self.proc = None
            raise RuntimeError(f"the Milvus server exited with {code}{self.tail()}")

    def answers(self) -> bool:
        """Whether the server answers a client's call on its port (the port is the one asked for)."""
        from pymilvus import MilvusClient

        try:
            client = MilvusClient(uri=self.http, timeout=2)
            try:
                client.list_collections()
            finally:
                client.close()
        except Exception:  # pymilvus raises MilvusException, grpc errors, ConnectionError...
            return False
        return True

    def kill(self) -> None:
        """``kill -9`` of the script and the server it started (their process group); returns once
        every process of the group has exited (each watched through a pidfd, no polling)."""
        if self.proc is None:
            return
        watched = []
        for pid in group_members(self.proc.pid):
            try:
                watched.append(os.pidfd_open(pid))
            except ProcessLookupError:
                continue
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for fd in watched:
            select.select([fd], [], [], 60)
            os.close(fd)
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        """Stop the server for good (the tests' end): kill -9, nothing of it is kept."""
        self.kill()

    def tail(self) -> str:
        logs = sorted(self.data.glob("script-*.log")) + sorted((self.data / "logs").glob("milvus-std*.log"))
        text = "".join(p.read_text(errors="replace")[-1500:] for p in logs[-3:])
        return f"; log tail:\n{text}" if text else ""
