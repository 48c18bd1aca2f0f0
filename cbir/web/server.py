"""``cbir serve``: the service put together and run under uvicorn until interrupted.

The socket is bound before anything else (a port in use is one error line, port 0 picks a free one),
the page answers at once, and the model loads, the index catches up and its near-duplicate groups are
made (:mod:`cbir.web.duplicates`) in background threads; with
``watch``, a :class:`~cbir.indexing.watch.FolderWatcher` asks the indexer for a run whenever the
folder's images change and settle.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from threadpoolctl import threadpool_limits

from cbir.core.errors import CbirError, DatasetError
from cbir.indexing.indexer import IndexOptions, IndexReport
from cbir.indexing.watch import Changes, FolderWatcher
from cbir.search.rerank import Reranking
from cbir.service.settings import Settings
from cbir.web.activity import Activity
from cbir.web.app import create_app
from cbir.web.collection import Collection
from cbir.web.duplicates import DuplicateReview, check_trash, default_trash
from cbir.web.model import ModelWorker, warmed_up
from cbir.web.security import Hosts
from cbir.web.service import MAX_UPLOAD_PIXELS, Service
from cbir.web.updater import Progress, Updater
from cbir.web.uploads import give_back_freed_memory

log = logging.getLogger(__name__)

LIBRARY_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "python_multipart", "multipart")
"""Loggers of the libraries under the server, whose messages go out as cbir's: one line each."""


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_upload_mb: float = 32.0
    max_upload_mp: float = MAX_UPLOAD_PIXELS / 1e6
    allow_hosts: tuple[str, ...] = ()  # Host names answered besides the bound address (--allow-host)
    watch: bool = False
    update: bool = True  # bring the index up to date at start
    reranking: Reranking = Reranking()  # of like and upload searches (none: speed first)
    trash: Path | None = None  # where the review moves duplicates (None: default_trash of the dataset)


class OneLine(logging.Formatter):
    """``cbir: warning: uvicorn.error: message``: one line, a traceback reduced to its last line."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            message += f": {type(exc).__name__}: {exc}"
        line = " ".join(message.split())
        return f"cbir: {record.levelname.lower()}: {record.name}: {line}"


def route_library_logs(level: int = logging.WARNING) -> None:
    """Send uvicorn's and python-multipart's messages (at ``level`` and above) to stderr as one line
    each, instead of their own formats or Python's bare last-resort output."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLine())
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; CbirError (one line) when that is impossible."""
    if not 0 <= port <= 65535:
        raise CbirError(f"--port {port}: a port is between 0 and 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        raise CbirError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


@dataclass
class Watching:
    """What the watcher saw and will retry, told to the page (the indexer's ``progress``) and the
    terminal (``activity``)."""

    activity: Activity | None = None
    progress: Progress = field(default_factory=Progress)
    watcher: FolderWatcher | None = None
    then: Callable[[], None] = lambda: None  # what else follows each run

    def done(self, report: IndexReport) -> None:
        """After a run: with a watcher, files that could not be read are looked at again later."""
        self.then()
        if self.watcher is None:
            return
        wait = self.watcher.retry(report.transient > 0)
        self.progress.retry = None if wait is None else {"files": report.transient, "in_s": wait}
        if wait is not None and self.activity is not None:
            self.activity.retrying(report.transient, wait)

    def seen(self, batch: Changes) -> None:
        """The watcher saw a settled batch of changes (the run it asks for comes next)."""
        added, changed, removed = batch
        counts = {"added": len(added), "changed": len(changed), "removed": len(removed)}
        self.progress.change = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), **counts}
        if self.activity is not None:
            self.activity.changed(batch)


@contextmanager
def running_service(
    settings: Settings,
    index_options: IndexOptions,
    options: ServeOptions,
    activity: Activity | None = None,
) -> Iterator[Service]:
    """The service with its model worker, indexer and (with ``watch``) watcher running; all stopped
    on the way out. ``activity``: where runs, changes and retries are told (the terminal)."""
    worker = ModelWorker(
        lambda: warmed_up(settings.embedder()), max_batch=settings.runtime.batch_size
    ).start()
    watching = Watching(activity)
    updater = Updater(settings, index_options, lambda: worker.wait(), watching.done, activity)
    watching.progress = updater.progress
    store = settings.home
    collection = Collection(settings.dataset, store, follow_links=index_options.follow_links)
    review = DuplicateReview(
        collection,
        options.trash or default_trash(settings.dataset),
        busy=lambda: updater.progress.state == "indexing",
        changed=updater.request,
    )
    watching.then = review.request  # the groups of each version just committed
    updater.start()
    review.start()
    service = Service(
        collection,
        worker,
        updater,
        limits=settings.runtime.limits,
        max_upload_bytes=int(options.max_upload_mb * 2**20),
        max_upload_pixels=int(options.max_upload_mp * 1e6),
        features=settings.config.to_dict(),
        reranking=options.reranking,
        review=review,
    )
    if options.watch:  # it looks at the folder before the first run: nothing added meanwhile is missed
        watching.watcher = FolderWatcher(
            settings.dataset,
            updater.request,
            skip=[*store.own_folders, store.cache_dir],
            options=index_options,
            on_seen=watching.seen,
        ).start()
    if options.update or options.watch:
        updater.request()
    try:
        yield service
    finally:
        if watching.watcher is not None:
            watching.watcher.stop()
        updater.stop()
        review.stop()
        worker.stop()


def serve(
    settings: Settings,
    index_options: IndexOptions,
    options: ServeOptions,
    on_listening: Callable[[str], None] = lambda url: None,
    activity: Activity | None = None,
) -> None:
    """Serve the collection of ``settings`` until interrupted; ``on_listening`` gets the URL, then
    ``activity`` writes what the indexer and the watcher do."""
    import uvicorn

    if not settings.dataset.is_dir():
        raise DatasetError(f"dataset folder not found: {settings.dataset}")
    check_trash(options.trash or default_trash(settings.dataset), settings.dataset)
    sock = bind(options.host, options.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={options.token}" if options.token else "")
    hosts = Hosts.of(options.host, host, options.allow_hosts)
    route_library_logs()
    give_back_freed_memory()
    # one BLAS thread: the model's runtime keeps the cores busy, and OpenBLAS's own threads, woken by
    # each request's search, spin after every call (a third of the server's CPU under load, measured)
    with (
        threadpool_limits(limits=1, user_api="blas"),
        running_service(settings, index_options, options, activity) as service,
    ):
        app = create_app(service, options.token, hosts)
        config = uvicorn.Config(app, log_level="warning", log_config=None, access_log=False, lifespan="off")
        server = uvicorn.Server(config)
        on_listening(url)
        if activity is not None:  # the URL first, then what the indexer and the watcher do
            activity.release()
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()
