"""The HTTP face of :class:`~cbir.web.service.Service`: a FastAPI app, the page and its JSON API.

Every error is JSON ``{"error": "one line"}``: 400 for bad input (not an image, a bad ``k``,
``page``, ``sort``, ``threshold`` or date, a malformed form; also a foreign ``Host``), 401 without
the token, 403 for a request from another site or without the CSRF header, 404 for anything that is
not an indexed image or folder (and unknown URLs), 405 for a method a URL does not take, 413 for an
upload over the cap, 501 for a feature this version lacks, 503 (with ``Retry-After``) while the
model loads, when too many uploads wait, or when the store (a Milvus server) fails; 500 for a bug
(no details: they go to the server's log). Every GET also answers HEAD. Hosts, origins, the token,
the CSRF header and the security headers are :mod:`cbir.web.security`'s. No CORS headers: only pages
served from here may read the API.

File names are bytes (:mod:`cbir.core.names`): a URL names a file by the percent-encoding of its
bytes (``bad%FF.jpg``), read here from the raw request (Starlette would decode it as UTF-8 and turn
an undecodable byte into U+FFFD), and the JSON carries an undecodable byte as ``\\udcNN``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
from collections.abc import AsyncGenerator
from importlib import resources
from urllib.parse import parse_qsl, unquote_to_bytes

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartParser

from cbir.core.errors import BadImageError, CbirError, QueryError, StoreError
from cbir.core.names import json_text
from cbir.core.types import JSONDict
from cbir.web.collection import NotFound
from cbir.web.duplicates import Conflict, Lacking
from cbir.web.model import ModelLoading
from cbir.web.security import CSRF_HEADER, Guard, Hosts, Policy
from cbir.web.service import Service, UploadTooLarge, Where
from cbir.web.thumbnails import thumbnail
from cbir.web.uploads import Busy


class Forbidden(CbirError):
    """A request that moves files without the CSRF header (HTTP 403)."""


STATUS: dict[type[Exception], int] = {
    NotFound: 404,
    Forbidden: 403,
    Conflict: 409,
    Lacking: 501,
    UploadTooLarge: 413,
    ModelLoading: 503,
    Busy: 503,
    StoreError: 503,
    BadImageError: 400,
    QueryError: 400,
}
RETRY_AFTER = {ModelLoading: 2, StoreError: 5}  # seconds; Busy says its own
STATIC_KINDS = {"js": "text/javascript", "css": "text/css", "html": "text/html"}
STATIC = frozenset(  # the page's files: every .js/.css/.html shipped in cbir/web/static
    item.name
    for item in resources.files("cbir.web").joinpath("static").iterdir()
    if item.name.rpartition(".")[2] in STATIC_KINDS
)
GET = ["GET", "HEAD"]
MAX_JSON = 1024 * 1024  # a review's moves: thousands of paths
REFUSAL_DELAY = 0.1
"""Seconds a refused upload waits for its answer, holding nothing (no place, no body, no CPU): a
page that loops hostile uploads gets a few refusals a second per connection instead of hundreds,
each costing this server's CPU that the normal uploads need (measured in bench_serve.py --attack)."""


class NamesJSON(JSONResponse):
    """JSON whose file names keep their bytes (:func:`~cbir.core.names.json_text`)."""

    def render(self, content: JSONDict) -> bytes:
        return json_text(content, allow_nan=False, separators=(",", ":")).encode("utf-8")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return NamesJSON({"error": " ".join(message.split())}, status_code=status, headers=headers)


def _query(request: Request, key: str, parsed: str | None) -> str | None:
    """The query parameter ``key`` with its percent-encoded bytes kept (``parsed``: FastAPI's value)."""
    if parsed is None:
        return None
    raw: bytes = request.scope.get("query_string") or b""
    text = raw.decode("ascii", "surrogateescape")
    for name, value in parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="surrogateescape"):
        if name == key:
            return os.fsdecode(os.fsencode(value))  # any raw (unencoded) bytes decoded as a name's
    return parsed


def _path_name(request: Request, prefix: str, parsed: str) -> str:
    """The file name after ``prefix`` in the request's raw path, its bytes kept."""
    raw: bytes = request.scope.get("raw_path") or b""
    if not raw.startswith(prefix.encode()):
        return parsed
    return os.fsdecode(unquote_to_bytes(raw[len(prefix) :]))


def _status(exc: Exception) -> int:
    for kind, status in STATUS.items():
        if isinstance(exc, kind):
            return status
    return 400


def _retry_after(exc: Exception) -> dict[str, str] | None:
    if isinstance(exc, Busy):
        return {"Retry-After": str(exc.retry_after)}
    for kind, seconds in RETRY_AFTER.items():
        if isinstance(exc, kind):
            return {"Retry-After": str(seconds)}
    return None


def _static(name: str) -> bytes:
    return resources.files("cbir.web").joinpath("static", name).read_bytes()


def _invalid(exc: RequestValidationError) -> str:
    """One line naming each bad parameter: ``k: Input should be a valid integer (got 'abc')``."""
    parts = []
    for error in exc.errors():
        name = str(error.get("loc", ("?",))[-1])
        got = error.get("input")
        shown = f" (got {got!r})" if got is not None else ""
        parts.append(f"{name}: {error.get('msg', 'invalid')}{shown}")
    return "; ".join(parts) or "bad request"


def create_app(service: Service, token: str | None = None, hosts: Hosts | None = None) -> Guard:
    """The app serving ``service``, behind :class:`~cbir.web.security.Guard` (outermost, so that
    even an internal error's answer carries its headers): with ``token``, every request must carry
    it (header ``Authorization: Bearer TOKEN``, or the cookie set by opening ``/?token=TOKEN``);
    with ``hosts``, only those ``Host`` names are answered."""
    app = FastAPI(
        title="cbir", docs_url=None, redoc_url=None, openapi_url=None, default_response_class=NamesJSON
    )
    policy = Policy(hosts=hosts, token=token)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, "internal error; the server's terminal says more")

    @app.exception_handler(CbirError)
    async def cbir_error(request: Request, exc: CbirError) -> JSONResponse:
        return _error(_status(exc), str(exc), _retry_after(exc))

    @app.exception_handler(BadImageError)
    async def bad_image(request: Request, exc: BadImageError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, _invalid(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = "not found" if exc.status_code == 404 else str(exc.detail)
        if exc.status_code == 405:
            message = f"{request.method} is not allowed here"
        return _error(exc.status_code, message, dict(exc.headers or {}))

    _add_page(app)
    _add_api(app, service, policy)
    _add_files(app, service)
    return Guard(app, policy)


def _add_page(app: FastAPI) -> None:
    @app.api_route("/", methods=GET, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(_static("index.html"), headers={"Cache-Control": "no-store"})

    @app.api_route("/static/{name}", methods=GET, include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC:
            return _error(404, "not found")
        kind = STATIC_KINDS[name.rpartition(".")[2]]
        return Response(_static(name), media_type=f"{kind}; charset=utf-8")


def _add_api(app: FastAPI, service: Service, policy: Policy) -> None:
    @app.api_route("/api/info", methods=GET)
    def info() -> JSONDict:
        return {**service.info(), "refused": dict(policy.refused)}

    @app.api_route("/api/csrf", methods=GET)
    def csrf() -> JSONResponse:
        """The header value every state-changing request of the page carries (X-CSRF-Token)."""
        return JSONResponse({"csrf": policy.csrf}, headers={"Cache-Control": "no-store"})

    @app.api_route("/api/browse", methods=GET)
    def browse(
        request: Request,
        dir: str = "",
        page: int = 1,
        since: str | None = None,
        until: str | None = None,
        sort: str = "name",
    ) -> JSONDict:
        where = Where(since=since, until=until)
        return service.browse(_query(request, "dir", dir) or "", page, where, sort)

    @app.api_route("/api/image", methods=GET)
    def image(request: Request, path: str) -> JSONDict:
        return service.image(_query(request, "path", path) or "")

    @app.api_route("/api/search", methods=GET)
    def search(
        request: Request,
        like: str | None = None,
        text: str | None = None,
        k: int = 9,
        under: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> JSONDict:
        where = Where(_query(request, "under", under), since, until)
        return service.search(_query(request, "like", like), text, k, where)

    @app.post("/api/search")
    async def upload(
        request: Request,
        k: int = 9,
        under: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> JSONDict:
        try:
            with service.uploads.admitted():  # before the body is read: memory is bounded
                data, name = await _read_upload(request, service.max_upload_bytes)
                service.screen(data, name)  # here, not in a worker thread: refusals stay cheap
                return await run_in_threadpool(
                    service.upload, data, name, k, Where(_query(request, "under", under), since, until)
                )
        except (BadImageError, UploadTooLarge, QueryError, Busy):
            await asyncio.sleep(REFUSAL_DELAY)  # the place is free again; only the sender waits
            raise

    @app.api_route("/api/duplicates", methods=GET)
    def duplicates(threshold: float | None = None) -> JSONDict:
        return service.duplicate_groups(threshold)

    @app.post("/api/duplicates/move")
    async def move_duplicates(request: Request) -> JSONDict:
        """Move the files a review chose out of the dataset: ``{"version": V, "groups": [{"keep":
        REL, "remove": [REL, ...]}]}``; the X-CSRF-Token header is required from every client."""
        body = await _json_body(request, policy)
        review = service.reviewer()
        return await run_in_threadpool(review.move, body.get("version"), body.get("groups"))

    @app.post("/api/duplicates/undo")
    async def undo_duplicates(request: Request) -> JSONDict:
        """Put back the files of a move: ``{"log": NAME}``, the name its answer gave."""
        body = await _json_body(request, policy)
        return await run_in_threadpool(service.reviewer().undo, body.get("log"))


async def _json_body(request: Request, policy: Policy) -> JSONDict:
    """The JSON object of a request that moves files, which must carry the CSRF header (scripts
    too: they read it from /api/csrf) and be small."""
    sent = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(sent.encode(), policy.csrf.encode()):
        raise Forbidden("missing or wrong X-CSRF-Token header (the page reads it from /api/csrf)")
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_JSON:
            raise QueryError(f"the request is larger than {MAX_JSON // 1024} KiB")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        raise QueryError("send a JSON object") from None
    if not isinstance(body, dict):
        raise QueryError("send a JSON object")
    return body


def _add_files(app: FastAPI, service: Service) -> None:
    @app.api_route("/thumbs/{rel:path}", methods=GET)
    def thumb(request: Request, rel: str) -> FileResponse:
        rel = _path_name(request, "/thumbs/", rel)
        path = service.collection.file(rel)
        try:
            made = thumbnail(service.collection.cache_dir, rel, path, service.limits)
        except (BadImageError, OSError) as exc:
            raise NotFound(f"no thumbnail for {rel}: {exc}") from None
        return FileResponse(made, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.api_route("/files/{rel:path}", methods=GET)
    def file(request: Request, rel: str) -> FileResponse:
        return FileResponse(service.collection.file(_path_name(request, "/files/", rel)))


async def _read_upload(request: Request, cap: int) -> tuple[bytes, str]:
    """The bytes and name of the multipart field ``file``, read into memory (never spooled to a
    temporary file) and refused as soon as the body passes ``cap`` plus room for the form's headers."""
    declared = request.headers.get("content-length")
    limit = cap + 64 * 1024
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UploadTooLarge(f"the upload is larger than {cap // 2**20} MiB")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadTooLarge(f"the upload is larger than {cap // 2**20} MiB")
        chunks.append(chunk)
    body = b"".join(chunks)

    async def replay() -> AsyncGenerator[bytes, None]:
        yield body

    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise QueryError("send the image as a multipart form field named 'file'")
    parser = _InMemoryParser(request.headers, replay(), max_files=1, max_fields=10)
    try:
        form = await parser.parse()
    except Exception as exc:  # python-multipart's errors: a malformed form
        raise QueryError(f"malformed upload: {exc}") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise QueryError("send the image as a multipart form field named 'file'")
    return await upload.read(), upload.filename or "upload"


class _InMemoryParser(MultiPartParser):
    """Starlette's multipart parser with uploads kept in memory (the body is already capped)."""

    spool_max_size = 2**40
