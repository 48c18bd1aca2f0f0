"""What reaches the terminal besides cbir's answers: the one log handler that cbir's records and
every library's go through (:func:`route_logs`), and silencing what native libraries (TensorFlow,
LiteRT) write straight to file descriptor 2."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the block (C++ start-up chatter); Python's own
    ``sys.stderr`` is flushed first and works again afterwards."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


LIBRARIES = (
    "pymilvus",
    "milvus_lite",
    "ray",
    "tensorflow",
    "absl",
    "keras",
    "h5py",
    "uvicorn",
    "python_multipart",
    "multipart",
    "py.warnings",
)
"""The libraries whose loggers :func:`adopt_library_logs` takes over (and their children's); any other
logger that reaches the root is treated the same way."""


class CbirHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one handler that writes log records to the terminal (stderr): cbir's own as
    ``cbir: LEVEL: message``, a library's as ``cbir: LEVEL: [library] message``, and a library's only
    from ``-v`` on (its warnings and errors; ``-vv`` everything), so that at the default verbosity
    only cbir's own lines reach the terminal."""

    def __init__(self, verbose: int) -> None:
        super().__init__(sys.stderr)
        self.verbose = verbose
        self.setFormatter(logging.Formatter("cbir: %(levelname)s: %(message)s"))

    def filter(self, record: logging.LogRecord) -> bool:
        """cbir's records as its logger's level lets them through; a library's by the verbosity."""
        if record.name == "cbir" or record.name.startswith("cbir."):
            return True
        if self.verbose == 0 or (self.verbose == 1 and record.levelno < logging.WARNING):
            return False
        return True

    def format(self, record: logging.LogRecord) -> str:
        """cbir's record as it is; a library's on one line (its traceback and any further lines
        left out), named by its library."""
        if record.name == "cbir" or record.name.startswith("cbir."):
            return super().format(record)
        message = record.getMessage().strip().splitlines() or [""]
        return f"cbir: {record.levelname}: [{record.name.split('.')[0]}] {message[0]}"

    def emit(self, record: logging.LogRecord) -> None:
        """Write to the current ``sys.stderr`` (which tests and redirections may have replaced)."""
        self.stream = sys.stderr
        super().emit(record)


def route_logs(verbose: int) -> None:
    """Send cbir's log records and every library's through one :class:`CbirHandler` on stderr:
    cbir's from WARNING (``-v`` INFO, ``-vv`` DEBUG), a library's only from ``-v`` on. Python's
    warnings become log records of ``py.warnings`` (a library's, then). Called again, it replaces
    the handler it installed before."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, CbirHandler) or _to_terminal(handler):
            root.removeHandler(handler)
    root.addHandler(CbirHandler(verbose))
    root.setLevel(logging.WARNING if verbose < 2 else logging.DEBUG)
    own = logging.getLogger("cbir")
    for handler in list(own.handlers):
        own.removeHandler(handler)
    own.setLevel(logging.WARNING if verbose == 0 else (logging.INFO if verbose == 1 else logging.DEBUG))
    own.propagate = True
    logging.captureWarnings(True)
    adopt_library_logs()


def adopt_library_logs() -> None:
    """Take the loggers of :data:`LIBRARIES` (and their children) back from the handlers the
    libraries installed for themselves (pymilvus and Ray do on import, Ray again in ``ray.init``):
    their records go to the root, where :class:`CbirHandler` decides. Cheap; call it after importing
    or starting one of them."""
    names = list(logging.Logger.manager.loggerDict)
    for name in names:
        if name.split(".")[0] in LIBRARIES or name in LIBRARIES:
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.propagate = True
            if logger.level != logging.NOTSET and logger.level < logging.WARNING:
                logger.setLevel(logging.NOTSET)  # the root's level decides (-vv: debug)


def _to_terminal(handler: logging.Handler) -> bool:
    """Whether ``handler`` is a plain stream handler writing to the terminal's stdout or stderr (what
    ``logging.basicConfig`` or a library installs on the root), not a file's or a test's."""
    stream = getattr(handler, "stream", None)
    return type(handler) is logging.StreamHandler and stream in (
        sys.stderr,
        sys.stdout,
        sys.__stderr__,
        sys.__stdout__,
    )
