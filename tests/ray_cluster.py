"""A real Ray cluster of two nodes on this machine for the tests: ``ray start --head --block`` and
``ray start --address HEAD --block`` on 127.0.0.1, each in its own process group, with its own short
``--temp-dir`` (Ray's unix socket paths must stay under ~107 characters) and a free port for every
port Ray opens, so it never meets another Ray on this machine (never ``ray stop``: that would end
every Ray here). Each node has one CPU and a resource of its own (``head``, ``second``), so work can be
placed on either. The cluster is ready when the GCS lists both nodes alive (polled, with the two
processes watched). ``kill_second()`` is ``kill -9`` of the second node (its process group and every
process started in its temp dir); ``stop()`` does that for both.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from milvus_server import free_ports

START_TIMEOUT = 120.0  # seconds: a node starts in ~3-10 s on two busy cores
WORKER_PORTS = 40  # ports of a node's worker range (one per worker process)
# node death noticed in ~2 s rather than the default ~15 s (GCS health checks of the raylets)
FAST_DEATH = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "4"}


def why_not() -> str | None:
    """Why no cluster can be started here (None: it can)."""
    if shutil.which("ray") is None:
        return "Ray's command line (the ray extra) is not installed"
    try:
        import ray  # noqa: F401
    except ImportError:
        return "the ray extra is not installed"
    return None


def free_range(n: int) -> int:
    """The first of ``n`` consecutive ports of 127.0.0.1 that are all free now."""
    for _ in range(200):
        base = random.randrange(20000, 40000 - n)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


def node_ports(taken: set[int]) -> list[str]:
    """The options giving one node a free port for everything it opens, none in ``taken`` (the
    cluster's other ports: Ray refuses one port for two components); adds them to ``taken``."""
    while True:
        ports = free_ports(7)
        low = free_range(WORKER_PORTS)
        mine = {*ports, *range(low, low + WORKER_PORTS)}
        if not mine & taken and len(mine) == 7 + WORKER_PORTS:
            taken |= mine
            break
    node, objects, metrics, agent, agent_grpc, env_agent, dashboard = ports
    return [
        f"--node-manager-port={node}",
        f"--object-manager-port={objects}",
        f"--metrics-export-port={metrics}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={env_agent}",
        f"--dashboard-port={dashboard}",
        f"--min-worker-port={low}",
        f"--max-worker-port={low + WORKER_PORTS - 1}",
    ]


def kill_processes(pgid: int, marker: str) -> None:
    """``kill -9`` of process group ``pgid`` and of every process whose command line names
    ``marker`` (a node's own temp dir: Ray's workers may leave the group); waits until they are gone."""
    doomed = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if stat[2] == str(pgid) or marker in cmdline:
            doomed.add(int(entry.name))
    fds = []
    for pid in doomed:
        try:
            fds.append(os.pidfd_open(pid))
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    for fd in fds:  # each death waited for through its pidfd (no polling)
        import select

        select.select([fd], [], [], 30)
        os.close(fd)


class Node:
    """One ``ray start --block`` process and its temp dir."""

    def __init__(self, args: list[str], temp: Path, env: dict[str, str]) -> None:
        self.temp = temp
        self.log = temp.parent / f"{temp.name}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["ray", "start", "--block", f"--temp-dir={temp}", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )

    def kill(self) -> None:
        kill_processes(self.proc.pid, str(self.temp))
        self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""


class RayCluster:
    """A head and a second node on 127.0.0.1 (see the module docstring); ``head_cpus`` and
    ``second=False`` make the one-node cluster the benchmark compares with."""

    def __init__(self, head_cpus: int = 1, second: bool = True) -> None:
        self.head_cpus, self.with_second = head_cpus, second
        self.base = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: Ray's socket paths
        self.port, self.client_port = free_ports(2)
        self.taken = {self.port, self.client_port}
        # a token of its own (Ray's default for a new cluster is token authentication, with a token
        # shared by every cluster of the user in ~/.ray): the tests' clients get it through env()
        self.auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.env = {**os.environ, **FAST_DEATH, **self.auth, "RAY_USAGE_STATS_ENABLED": "0"}
        self.head: Node | None = None
        self.second: Node | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start both nodes and return once the GCS lists both alive; RuntimeError otherwise."""
        common = [
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={self.head_cpus}",
            "--num-gpus=0",
            "--disable-usage-stats",
        ]
        self.head = Node(
            [
                "--head",
                f"--port={self.port}",
                f"--ray-client-server-port={self.client_port}",
                "--include-dashboard=false",
                f"--resources={json.dumps({'head': 1})}",
                *common,
                *node_ports(self.taken),
            ],
            self.base / "h",
            self.env,
        )
        self.wait_for(1)
        if self.with_second:
            self.add_second()

    def add_second(self) -> None:
        """Start the second node (again, after :meth:`kill_second`) and wait until it is alive."""
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats"]
        temp = self.base / f"w{len(list(self.base.glob('w*')))}"
        self.second = Node(
            [
                f"--address={self.address}",
                f"--resources={json.dumps({'second': 1})}",
                *common,
                *node_ports(self.taken),
            ],
            temp,
            self.env,
        )
        self.wait_for(2)

    def helper(self, *args: str) -> subprocess.Popen[str]:
        """This module run as a script against the cluster, in a process of its own with the
        cluster's environment: Ray keeps its authentication settings per process, and the tests'
        process may hold others (a local ``ray.init`` of another test sets them)."""
        return subprocess.Popen(
            [sys.executable, __file__, self.address, *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def alive(self) -> list[dict[str, object]]:
        """The nodes the GCS knows alive: ``{"id", "resources"}`` each."""
        return self.answer(self.helper("-1", "30"), "the Ray cluster's nodes")

    def answer(self, proc: subprocess.Popen[str], what: str) -> list[dict[str, object]]:
        out, err = proc.communicate(timeout=START_TIMEOUT + 30)
        if proc.returncode != 0:
            raise RuntimeError(f"cannot get {what}: {err.strip()[-2000:]}")
        return list(json.loads(out.strip().splitlines()[-1]))

    def actors(self) -> list[dict[str, object]]:
        """Every actor the cluster has had (``{"class", "node"}``: its class name, its node's id)."""
        return self.answer(self.helper("actors"), "the Ray cluster's actors")

    def node_with(self, resource: str) -> str:
        """The id of the alive node that has ``resource`` (``head`` or ``second``)."""
        return next(str(n["id"]) for n in self.alive() if resource in n["resources"])  # type: ignore[operator]

    def wait_for(self, nodes: int) -> None:
        """Return once exactly ``nodes`` nodes are alive (the GCS polled by a helper process while the
        nodes' processes are watched); RuntimeError with the nodes' output if one exits first."""
        poller = self.helper(str(nodes), str(START_TIMEOUT))
        try:
            while True:
                try:
                    poller.wait(timeout=0.25)  # the pause between two looks at the nodes
                    break
                except subprocess.TimeoutExpired:
                    for node in (self.head, self.second):
                        if node is not None and node.proc.poll() is not None:
                            why = f"ray start exited with {node.proc.returncode}: {node.tail()}"
                            raise RuntimeError(why) from None
            self.answer(poller, f"{nodes} alive Ray nodes")
        finally:
            if poller.poll() is None:
                poller.kill()
                poller.communicate()

    def kill_second(self) -> None:
        """``kill -9`` of the second node; returns once its processes are gone and the GCS has
        noticed (the head alone alive: a node started next is then told apart from this one)."""
        if self.second is not None:
            self.second.kill()
            self.second = None
            self.wait_for(1)

    def stop(self) -> None:
        """Both nodes killed (only this cluster's processes), their temp dirs removed."""
        for node in (self.second, self.head):
            if node is not None:
                node.kill()
        shutil.rmtree(self.base, ignore_errors=True)


def poll(address: str, wanted: int, timeout: float) -> list[dict[str, object]]:
    """The alive nodes of the cluster at ``address`` once there are exactly ``wanted`` (any number
    if negative), polled every 0.25 s up to ``timeout``: the GCS may not be up yet, and a killed
    node is alive to it until its health checks fail."""
    from ray._raylet import GcsClient

    deadline = time.monotonic() + timeout
    while True:
        try:
            infos = GcsClient(address=address).get_all_node_info(timeout=5)
            found = [
                {"id": node_id.hex(), "resources": dict(info.resources_total)}
                for node_id, info in infos.items()
                if info.state == 0  # ALIVE
            ]
            if wanted < 0 or len(found) == wanted:
                return found
        except Exception:  # the GCS is not up yet: Ray raises RpcError, ConnectionError...
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"not {wanted} alive Ray nodes after {timeout:.0f} s")
        time.sleep(0.25)  # the pause between two polls (a poll with a deadline, not a synchronisation)


def actors(address: str) -> list[dict[str, object]]:
    """Every actor the cluster at ``address`` has had: ``{"class", "node"}`` (node id, hex) each."""
    import asyncio

    from ray._raylet import GcsClient

    infos = asyncio.run(_actor_infos(GcsClient(address=address)))
    return [{"class": info.class_name, "node": info.address.node_id.hex()} for info in infos.values()]


async def _actor_infos(client: object) -> dict[object, object]:
    return await client.async_get_all_actor_info(timeout=10)  # type: ignore[attr-defined,no-any-return]


if __name__ == "__main__":
    if sys.argv[2] == "actors":
        print(json.dumps(actors(sys.argv[1])))
    else:
        print(json.dumps(poll(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))))
