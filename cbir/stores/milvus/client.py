"""Talking to Milvus (the milvus extra, ``pymilvus.MilvusClient``): URIs, connecting, errors, and
one collection as the Milvus store keeps it (:class:`MilvusCollection`).

One collection holds one dataset indexed with one set of features, in versions: each commit is a
version number, and a row is a file as one range of versions saw it. Its fields: ``key`` (the primary
key: the path and the version the row was written in, :func:`row_key`), ``path`` (the file relative
to the dataset root), ``born`` and ``dies`` (the row belongs to versions ``born <= V < dies``;
``dies`` is :data:`LIVE` while the row is current), ``vector`` (HNSW, inner product), ``size`` and
``mtime_ns`` (what the file was embedded at), ``folder`` and ``taken`` (for the filters), ``status``
(0 indexed, 1 failed, 2 failed for a reason that may pass) and ``reason``. A reader of version V
adds :func:`visible` to every expression. The feature settings, the weights file, the commit stamp,
the committed version, the times of recent commits and the collection horizon (rows that died at or
before it are deleted) live in the collection's properties (Milvus Lite keeps no description),
checked on every open. Collections of the first format (:data:`OLD_FORMAT`, keyed by path, no
versions) are read as they are and moved to this one by the next writer
(:mod:`cbir.stores.milvus.migrate`). The store is :mod:`cbir.stores.milvus.store`, its writer
:mod:`cbir.stores.milvus.writer`, its reader and searcher :mod:`cbir.stores.milvus.reader`.

The labels of ``cbir index --labels`` live in a second collection beside it, ``COLLECTION_labels``
(:class:`LabelsCollection`: ``path``, ``labels`` in their text form, a placeholder vector Milvus
requires; the classifier in its properties), so a collection made before labels existed gets them
without being rebuilt. Its ``path`` is keyed, written and read exactly as the main collection's.

Names (``path``, ``folder``) are stored in :func:`~cbir.core.names.to_key` form: valid Unicode
whatever the file name's bytes, with no backslash or double quote, because pymilvus writes some
expressions itself without escaping (its query iterator pages with ``path > "LAST KEY"``; its
``ids=`` reads quote nothing, so they are never used). Every expression cbir writes is written
here, by :func:`literal` and :func:`path_in` (Milvus reads ``\\`` and ``\"`` escapes in a string
literal), so a name in memory reaches Milvus escaped in one place.

``milvus:PATH.db`` is Milvus Lite, a server started inside this process on 127.0.0.1. Its failures
to start (a ``.db`` held by another process, one that is not a Milvus Lite database, a full disk)
are one line each (:func:`lite_failure`); pymilvus' and milvus-lite's own log records go to cbir's
logger at debug level (shown with ``-vv``), never to the terminal as tracebacks. A server URI
takes its token from the environment variable :data:`TOKEN_ENV`, never from the command line.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cbir.core.errors import IndexFolderError, StoreError
from cbir.core.names import from_key, shown, to_key
from cbir.core.quiet import adopt_library_logs
from cbir.core.types import JSONDict
from cbir.encoders.features import FeatureConfig

if TYPE_CHECKING:
    from pymilvus import MilvusClient

log = logging.getLogger(__name__)
engine_log = logging.getLogger("cbir.stores.milvus.engine")

TOKEN_ENV = "CBIR_MILVUS_TOKEN"
"""The environment variable holding the token (``user:password`` or an API key) of a Milvus server."""

FORMAT = "cbir-milvus-2"
OLD_FORMAT = "cbir-milvus-1"  # keyed by path, no versions: read as is, migrated by the next writer
KEY_FORMAT, KEY_SETTINGS = "cbir.format", "cbir.settings"
KEY_WEIGHTS, KEY_COMMIT = "cbir.weights", "cbir.commit"
KEY_READ_TS = "cbir.read_ts"
KEY_VERSION, KEY_TIMES, KEY_HORIZON = "cbir.version", "cbir.commit_times", "cbir.horizon"
KEY_COMPLETE = "cbir.complete"  # on a migration's new collection once every row is copied
LIVE = 2**62  # ``dies`` of a current row: later than any version
MIGRATING, RETIRED = "_cbir_migrating", "_cbir_format1"  # suffixes of a migration's two collections
HNSW = {"M": 32, "efConstruction": 80}  # the folder store's HNSW build parameters (cbir.stores.folder.ann)
EF_SEARCH = 256
MAX_PATH = 16_384  # bytes: a 4096-byte POSIX path with every byte escaped as \xNN
MAX_REASON = 1024
IDS_PER_CALL = 1024  # names in one ``path in [...]`` expression
CONNECT_TIMEOUT = 10.0
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


@dataclass(frozen=True)
class MilvusAddress:
    """Where a collection is: the client URI (a ``.db`` file or ``http[s]://host:port``) and its name
    (None: named after the dataset)."""

    uri: str
    collection: str | None = None

    @property
    def lite(self) -> bool:
        """A Milvus Lite file (a server started in this process), not a server's address."""
        return not self.uri.startswith(("http://", "https://"))


def parse_milvus_uri(text: str) -> MilvusAddress:
    """``milvus:PATH.db``, ``milvus://HOST:PORT[/COLLECTION]``, ``milvus+https://HOST[:PORT][/COLLECTION]``."""
    for scheme, http in (("milvus://", "http"), ("milvus+https://", "https")):
        if text.startswith(scheme):
            host, _, name = text[len(scheme) :].partition("/")
            if not host or host.startswith(":") or "@" in host:
                raise StoreError(f"--store {text}: give HOST:PORT (the token goes in ${TOKEN_ENV})")
            name = name.strip("/")
            if name and not _NAME.match(name):
                raise StoreError(f"--store {text}: a collection name is letters, digits and _")
            return MilvusAddress(f"{http}://{host}", name or None)
    if text.startswith("milvus:"):
        path = text[len("milvus:") :]
        if not path.endswith(".db") or len(path) <= 3:
            raise StoreError(f"--store {text}: Milvus Lite needs a file name ending in .db")
        if not Path(path).resolve().parent.is_dir():
            raise StoreError(f"--store {text}: the folder {Path(path).parent} does not exist")
        return MilvusAddress(str(Path(path).resolve()))
    raise StoreError(f"--store {text}: not a Milvus URI (milvus:PATH.db or milvus://HOST:PORT)")


def folder_of(path: str) -> str:
    """The folder of a relative path, "" at the top (a row's ``folder`` field holds its text form)."""
    return path.rpartition("/")[0]


def literal(text: str) -> str:
    """``text`` as a Milvus string literal: the one place a string enters an expression."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def name_literal(name: str) -> str:
    """A file or folder name (in memory) as the literal of its stored text form."""
    return literal(to_key(name))


def path_in(paths: Iterable[str]) -> str:
    """The expression true for the rows of ``paths`` (names in memory)."""
    return f"path in [{', '.join(map(name_literal, paths))}]"


def visible(version: int) -> str:
    """The expression true for the rows of version ``version``."""
    return f"born <= {int(version)} and dies > {int(version)}"


def both(*parts: str) -> str:
    """The conjunction of the non-empty expressions ``parts``."""
    return " and ".join(f"({p})" for p in parts if p)


def row_key(path: str, born: int) -> str:
    """A row's primary key: the stored form of ``path`` (no ``#`` is special in it) and its version."""
    return f"{to_key(path)}#{int(born)}"


def key_in(keys: Iterable[str]) -> str:
    """The expression true for the rows of the primary keys ``keys``."""
    return f"key in [{', '.join(map(literal, keys))}]"


def stored_reason(reason: str) -> str:
    """A failure's reason as the ``reason`` field holds it: shown form, cut to MAX_REASON bytes."""
    return shown(reason).encode("utf-8")[:MAX_REASON].decode("utf-8", "ignore")


def path_of(row: JSONDict) -> str | None:
    """The in-memory name of a stored row; None (with a warning) for a name that is not in the
    stored form (a row written by a release before names were escaped: ``--rebuild`` fixes it)."""
    text = str(row["path"])
    try:
        return from_key(text)
    except ValueError:
        log.warning("ignored a row of the collection named %r: rebuild it with --rebuild", text)
        return None


def default_collection(root: Path) -> str:
    """One collection per dataset: its folder name and a digest of its full path."""
    real = os.path.realpath(root)
    slug = re.sub(r"[^A-Za-z0-9_]", "_", Path(real).name)[:40]
    return f"cbir_{slug}_{hashlib.sha1(os.fsencode(real)).hexdigest()[:10]}"


@contextlib.contextmanager
def milvus_errors(what: str) -> Iterator[None]:
    """Turn a Milvus client error into one line: ``what`` failed, and why."""
    try:
        yield
    except StoreError:
        raise
    except Exception as exc:
        if type(exc).__module__.split(".")[0] != "pymilvus":
            raise
        message = getattr(exc, "message", None) or str(exc)
        raise StoreError(f"Milvus: {what} failed: {message}") from None


def connect(address: MilvusAddress) -> MilvusClient:
    """A client of ``address``; StoreError when the extra is missing or the server cannot be reached."""
    return open_client(address.uri, token_for(address))


def token_for(address: MilvusAddress) -> str:
    """The token for ``address``: ``$CBIR_MILVUS_TOKEN`` for a server, none for Milvus Lite."""
    return "" if address.lite else os.environ.get(TOKEN_ENV, "")


class _EngineRecords(logging.Handler):
    """pymilvus' and milvus-lite's log records, passed to cbir's logger at debug level; the last
    exception one carried is kept to say in one line why Milvus Lite did not start."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last_error: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info is not None and record.exc_info[1] is not None:
            self.last_error = record.exc_info[1]
        engine_log.debug("%s: %s", record.name, record.getMessage(), exc_info=record.exc_info)


ENGINE_RECORDS = _EngineRecords()


def _route_engine_logs() -> None:
    """Send the engine's loggers (pymilvus, milvus-lite, the gRPC under both) to
    :data:`ENGINE_RECORDS` only."""
    for name in ("pymilvus", "milvus_lite", "grpc"):
        engine = logging.getLogger(name)
        engine.setLevel(logging.WARNING)
        engine.handlers[:] = [ENGINE_RECORDS]
        engine.propagate = False


def lite_failure(path: str, error: BaseException) -> str:
    """One line for why Milvus Lite could not open ``path`` (from the exception it logged)."""
    chain: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    names = {type(e).__name__ for e in chain}
    codes = {e.errno for e in chain if isinstance(e, OSError)}
    if "DataDirLockedError" in names or errno.EAGAIN in codes or errno.EWOULDBLOCK in codes:
        return (
            f"the Milvus Lite database {path} is in use by another process; "
            "use a Milvus server for concurrent access"
        )
    if codes & {errno.EEXIST, errno.ENOTDIR}:
        return f"{path} is not a Milvus Lite database (it is a regular file); name another .db"
    if errno.ENOSPC in codes or errno.EDQUOT in codes:
        return f"no space left on the device for the Milvus Lite database {path}"
    for e in chain:
        if isinstance(e, OSError) and e.strerror:
            return f"cannot open the Milvus Lite database {path}: {e.strerror}"
    return f"Milvus Lite could not open {path}: {type(error).__name__}: {error}"


def open_client(uri: str, token: str) -> MilvusClient:
    """A client of ``uri`` (a ``.db`` file or a gRPC address) with ``token``; one-line errors."""
    try:
        from pymilvus import MilvusClient  # the milvus extra: only for this store
    except ImportError as exc:
        raise StoreError(
            f"the Milvus store needs the milvus extra ({exc}): pip install 'cbir[milvus]'"
        ) from None
    adopt_library_logs()  # pymilvus installs its own handlers on import
    _route_engine_logs()  # then the engine's records go to ENGINE_RECORDS only
    ENGINE_RECORDS.last_error = None
    try:
        with milvus_errors(f"connecting to {uri}"):
            return MilvusClient(uri=uri, token=token, timeout=CONNECT_TIMEOUT)
    except StoreError:
        why = ENGINE_RECORDS.last_error
        if why is None or uri.startswith(("http://", "https://")):
            raise
        raise StoreError(lite_failure(uri, why)) from None


def served_uri(address: MilvusAddress) -> str:
    """The address other processes reach ``address`` at: a server's own, or for Milvus Lite the gRPC
    port its in-process server listens on (127.0.0.1: this machine only). A second process must not
    open the ``.db`` file itself: that would start a second server on the same files."""
    if not address.lite:
        return address.uri
    from milvus_lite.server_manager import server_manager_instance  # the same call pymilvus makes

    uri = server_manager_instance.start_and_get_uri(address.uri)  # the running server, not a new one
    if uri is None:
        raise StoreError(f"Milvus Lite could not serve {address.uri}")
    return str(uri)


def new_commit_stamp() -> str:
    return f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Record:
    """What a collection says about itself (its properties): settings, weights file, commit stamp,
    the server timestamp its readers read at (``read_ts``, 0: none, see :func:`read_at`), the
    committed version, when each recent version was committed (``times``: version -> seconds, those
    whose dead rows are not yet deleted) and the ``horizon`` (rows with ``dies <= horizon`` are
    deleted: readers of versions before it cannot read whole); ``versioned`` False for a collection
    of :data:`OLD_FORMAT`."""

    config: FeatureConfig
    dim: int
    weights_path: str | None
    commit: str
    read_ts: int = 0
    version: int = 0
    times: dict[int, float] = field(default_factory=dict)
    horizon: int = 0
    versioned: bool = True

    def properties(self) -> dict[str, str]:
        return {
            KEY_FORMAT: FORMAT,
            KEY_SETTINGS: json.dumps({"config": self.config.to_dict(), "dim": self.dim}, sort_keys=True),
            KEY_WEIGHTS: self.weights_path or "",
            KEY_COMMIT: self.commit,
            KEY_READ_TS: str(self.read_ts),
            KEY_VERSION: str(self.version),
            KEY_TIMES: times_text(self.times),
            KEY_HORIZON: str(self.horizon),
        }


def times_text(times: dict[int, float]) -> str:
    return json.dumps({str(v): t for v, t in sorted(times.items())})


def _int_property(props: dict[str, str], key: str) -> int:
    try:
        return max(0, int(props.get(key) or 0))
    except ValueError:
        return 0


def _times(props: dict[str, str]) -> dict[int, float]:
    try:
        doc = json.loads(props.get(KEY_TIMES) or "{}")
        return {int(v): float(t) for v, t in doc.items()}
    except (ValueError, TypeError, AttributeError):
        return {}  # damaged: dead rows wait for later commits' times


# A read must see every row committed before it. A server's default, "Bounded", lets a query miss
# rows upserted a moment ago (a resumed run would embed them again, a reader would lose them);
# "Strong" sees them but waits for the server's next time tick on every call (~200 ms on a 2.3
# server). So a commit records a server timestamp issued after its last write (``read_ts``), and a
# reader of that commit reads at it ("Customized": waits only until the server has applied the
# writes up to it, at most once); writers, and collections committed without one, read "Strong".
CONSISTENCY = "Strong"


def read_at(ts: int) -> dict[str, object]:
    """The consistency arguments of a read that sees every write the server acknowledged before
    issuing the hybrid timestamp ``ts`` (0: every write acknowledged before the read, "Strong")."""
    if ts > 0:
        return {"consistency_level": "Customized", "guarantee_timestamp": ts}
    return {"consistency_level": CONSISTENCY}


def server_timestamp(client: MilvusClient) -> int:
    """A hybrid timestamp issued by the server now, later than every write it has acknowledged; 0
    where the server issues none (Milvus Lite answers 0: its reads never wait, "Strong" costs nothing).
    pymilvus has the call (AllocTimestamp) on its connection only, not on MilvusClient."""
    connection = getattr(client, "_get_connection", None)
    alloc = getattr(connection() if connection is not None else None, "alloc_timestamp", None)
    if alloc is None:
        return 0
    with milvus_errors("asking the server for a timestamp"):
        return max(0, int(alloc()))


@dataclass
class MilvusCollection:
    """One collection of a client, as the Milvus store keeps it; ``where`` names it for people."""

    client: MilvusClient
    name: str
    where: str

    def record(self) -> Record | None:
        """What the collection says about itself (None if there is none); StoreError if not ours."""
        with milvus_errors(f"reading the collection {self.name}"):
            if not self.client.has_collection(self.name):
                return None
            props = self.client.describe_collection(self.name).get("properties") or {}
        if props.get(KEY_FORMAT) not in (FORMAT, OLD_FORMAT):
            raise StoreError(f"the collection {self.where} was not made by cbir; name another one in --store")
        try:
            doc: JSONDict = json.loads(props[KEY_SETTINGS])
            config = FeatureConfig.from_dict(doc["config"])
            dim = int(doc["dim"])
        except (KeyError, ValueError, TypeError) as exc:
            raise IndexFolderError(
                f"the collection {self.where} has damaged settings ({exc}); rebuild with --rebuild"
            ) from None
        return Record(
            config,
            dim,
            props.get(KEY_WEIGHTS) or None,
            props.get(KEY_COMMIT, ""),
            _int_property(props, KEY_READ_TS),  # 0 (none, or not one cbir wrote): read "Strong"
            _int_property(props, KEY_VERSION),
            _times(props),
            _int_property(props, KEY_HORIZON),
            props.get(KEY_FORMAT) == FORMAT,
        )

    def horizon(self) -> int | None:
        """The collection's horizon (one call: a reader asks after each read); None when the
        collection is not a versioned one of cbir's any more (dropped, made again, migrated)."""
        with milvus_errors(f"reading the collection {self.name}"):
            props = self.client.describe_collection(self.name).get("properties") or {}
        return _int_property(props, KEY_HORIZON) if props.get(KEY_FORMAT) == FORMAT else None

    def exists(self) -> bool:
        with milvus_errors(f"reading the collection {self.name}"):
            return bool(self.client.has_collection(self.name))

    def complete(self) -> bool:
        """Whether a migration's new collection holds every row (:data:`KEY_COMPLETE`)."""
        with milvus_errors(f"reading the collection {self.name}"):
            props = self.client.describe_collection(self.name).get("properties") or {}
        return props.get(KEY_COMPLETE) == "1"

    def create(self, record: Record) -> None:
        """A new, empty collection for ``record`` (another process may have made it meanwhile)."""
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=MAX_PATH + 24)
        schema.add_field("path", DataType.VARCHAR, max_length=MAX_PATH)
        schema.add_field("born", DataType.INT64)
        schema.add_field("dies", DataType.INT64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=record.dim)
        schema.add_field("size", DataType.INT64)
        schema.add_field("mtime_ns", DataType.INT64)
        schema.add_field("folder", DataType.VARCHAR, max_length=MAX_PATH)
        schema.add_field("taken", DataType.VARCHAR, max_length=32)
        schema.add_field("status", DataType.INT8)
        schema.add_field("reason", DataType.VARCHAR, max_length=MAX_REASON)
        with milvus_errors(f"creating the collection {self.name}"):
            index = self.client.prepare_index_params()
            index.add_index(field_name="vector", index_type="HNSW", metric_type="IP", params=dict(HNSW))
            if self.client.has_collection(self.name):
                return
            self.client.create_collection(
                self.name,
                schema=schema,
                index_params=index,
                description=f"cbir index ({record.config.model})",
                properties=record.properties(),
                consistency_level=CONSISTENCY,
            )

    def drop(self) -> None:
        with milvus_errors(f"dropping the collection {self.name}"):
            self.client.drop_collection(self.name)

    def set_commit(self, stamp: str, read_ts: int, version: int, times: dict[int, float]) -> None:
        """Publish version ``version``: its stamp, the server timestamp its readers read at and the
        commit times (one call: all or none)."""
        self.set_properties(
            {
                KEY_COMMIT: stamp,
                KEY_READ_TS: str(read_ts),
                KEY_VERSION: str(version),
                KEY_TIMES: times_text(times),
            }
        )

    def set_properties(self, properties: dict[str, str]) -> None:
        with milvus_errors(f"committing to the collection {self.name}"):
            self.client.alter_collection_properties(self.name, properties=properties)

    def rename(self, new_name: str) -> None:
        with milvus_errors(f"renaming the collection {self.name}"):
            self.client.rename_collection(self.name, new_name)

    def delete_where(self, where: str) -> None:
        """Delete every row matching the expression ``where``."""
        with milvus_errors(f"deleting from the collection {self.name}"):
            self.client.delete(self.name, filter=where)

    def by_key(self, keys: Sequence[str], fields: list[str]) -> Iterator[JSONDict]:
        """The rows of the primary keys ``keys`` that exist, with ``fields`` (read "Strong")."""
        for start in range(0, len(keys), IDS_PER_CALL):
            with milvus_errors(f"reading the collection {self.name}"):
                got = self.client.query(
                    self.name,
                    filter=key_in(keys[start : start + IDS_PER_CALL]),
                    output_fields=_with_path(fields),
                    **read_at(0),
                )
            yield from _named(got)

    def ensure_loaded(self) -> None:
        """A reopened collection must be loaded before it is searched or queried (a restarted server
        reloads its collections in the background: this waits for that)."""
        with milvus_errors(f"loading the collection {self.name}"):
            state = str(self.client.get_load_state(self.name).get("state", ""))
            if "Loaded" not in state:  # NotLoad, or Loading (a server reloading after a restart)
                self.client.load_collection(self.name)  # returns once it is loaded

    def labels(self) -> LabelsCollection:
        """The collection of this one's labels (which may not exist yet)."""
        return LabelsCollection(self.client, f"{self.name}{LABELS_SUFFIX}", self.where)

    def rows(self, where: str, fields: list[str], batch: int = 4096, ts: int = 0) -> Iterator[JSONDict]:
        """Every row matching the filter ``where``, with ``fields``, in batches of ``batch``, read at
        ``ts`` (:func:`read_at`); its ``path`` in memory form (rows whose name is not in the stored
        form are left out)."""
        return rows_of(self.client, self.name, where, fields, batch, ts)

    def get(self, paths: Sequence[str], fields: list[str], ts: int = 0, also: str = "") -> Iterator[JSONDict]:
        """The rows of ``paths`` (any status) that exist and match ``also``, with ``fields``, read at
        ``ts``; ``path`` in memory form."""
        return get_rows(self.client, self.name, paths, fields, ts, also)

    def delete_keys(self, keys: Sequence[str]) -> None:
        """Delete the rows of the primary keys ``keys``."""
        for start in range(0, len(keys), IDS_PER_CALL):
            self.delete_where(key_in(keys[start : start + IDS_PER_CALL]))


LABELS_SUFFIX = "_labels"
LABELS_FORMAT = "cbir-milvus-labels-1"
KEY_CLASSIFIER = "cbir.classifier"
MAX_LABELS_TEXT = 256


@dataclass
class LabelsCollection:
    """The labels of a cbir collection, one row per labelled image (see the module docstring)."""

    client: MilvusClient
    name: str
    where: str

    def classifier(self) -> str | None:
        """The classifier that made the labels, None when there are none; StoreError if not ours."""
        with milvus_errors(f"reading the collection {self.name}"):
            if not self.client.has_collection(self.name):
                return None
            props = self.client.describe_collection(self.name).get("properties") or {}
        if props.get(KEY_FORMAT) != LABELS_FORMAT:
            raise StoreError(f"the collection {self.name} was not made by cbir; name another one in --store")
        return str(props.get(KEY_CLASSIFIER, "")) or None

    def create(self, classifier: str) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("path", DataType.VARCHAR, is_primary=True, max_length=MAX_PATH)
        schema.add_field("labels", DataType.VARCHAR, max_length=MAX_LABELS_TEXT)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)  # Milvus needs one; never searched
        with milvus_errors(f"creating the collection {self.name}"):
            index = self.client.prepare_index_params()
            index.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
            if self.client.has_collection(self.name):
                return
            self.client.create_collection(
                self.name,
                schema=schema,
                index_params=index,
                description="cbir labels",
                consistency_level=CONSISTENCY,
                properties={KEY_FORMAT: LABELS_FORMAT, KEY_CLASSIFIER: classifier},
            )

    def drop(self) -> None:
        with milvus_errors(f"dropping the collection {self.name}"):
            self.client.drop_collection(self.name)

    def ensure_loaded(self) -> None:
        with milvus_errors(f"loading the collection {self.name}"):
            state = str(self.client.get_load_state(self.name).get("state", ""))
            if "Loaded" not in state:  # NotLoad, or Loading (a server reloading after a restart)
                self.client.load_collection(self.name)  # returns once it is loaded

    def rows(self, ts: int = 0) -> Iterator[JSONDict]:
        """Every labels row (``path`` in memory form, ``labels``), read at ``ts`` (:func:`read_at`)."""
        return rows_of(self.client, self.name, f"path != {literal('')}", ["labels"], 4096, ts)

    def put(self, rows: dict[str, str], batch_rows: int) -> None:
        """Upsert ``rows`` (path in memory -> labels text) in batches, keyed as the main collection."""
        items = [{"path": to_key(p), "labels": t, "vector": [1.0, 0.0]} for p, t in sorted(rows.items())]
        for start in range(0, len(items), batch_rows):
            with milvus_errors(f"writing to the collection {self.name}"):
                self.client.upsert(self.name, items[start : start + batch_rows])

    def delete(self, paths: Sequence[str]) -> None:
        """Delete the labels of ``paths`` (names in memory)."""
        delete_rows(self.client, self.name, paths)


def rows_of(
    client: MilvusClient, name: str, where: str, fields: list[str], batch: int, ts: int = 0
) -> Iterator[JSONDict]:
    """Every row of the collection ``name`` matching ``where``, with ``fields``, in batches, read at
    ``ts`` (:func:`read_at`); its ``path`` in memory form (rows whose name is not in the stored form
    are left out)."""
    with milvus_errors(f"reading the collection {name}"):
        it = client.query_iterator(
            name,
            batch_size=batch,
            filter=where,
            output_fields=_with_path(fields),
            **read_at(ts),
        )
        try:
            while True:
                got = it.next()
                if not got:
                    return
                yield from _named(got)
        finally:
            it.close()


def get_rows(
    client: MilvusClient, name: str, paths: Sequence[str], fields: list[str], ts: int = 0, also: str = ""
) -> Iterator[JSONDict]:
    """The rows of ``paths`` (names in memory) that exist and match ``also``, with ``fields``, read
    at ``ts`` (:func:`read_at`); ``path`` in memory form."""
    for start in range(0, len(paths), IDS_PER_CALL):
        with milvus_errors(f"reading the collection {name}"):
            got = client.query(
                name,
                filter=both(path_in(paths[start : start + IDS_PER_CALL]), also),
                output_fields=_with_path(fields),
                **read_at(ts),
            )
        yield from _named(got)


def delete_rows(client: MilvusClient, name: str, paths: Sequence[str]) -> None:
    """Delete the rows of ``paths`` (names in memory) from the collection ``name``."""
    for start in range(0, len(paths), IDS_PER_CALL):
        with milvus_errors(f"deleting from the collection {name}"):
            client.delete(name, filter=path_in(paths[start : start + IDS_PER_CALL]))


def _with_path(fields: list[str]) -> list[str]:
    return ["path", *(f for f in fields if f != "path")]


def _named(rows: Iterable[JSONDict]) -> Iterator[JSONDict]:
    for row in rows:
        path = path_of(row)
        if path is not None:
            yield {**row, "path": path}
