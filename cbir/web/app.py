"""The HTTP face of :class:`~cbir.web.service.Service`: a FastAPI app, the page and its JSON API.

Errors are JSON ``{"error": "..."}``: 400 for bad input (not an image, bad k), 401 without the
token, 404 for anything that is not an indexed image or folder, 413 for an upload over the cap, 501
for a feature this version lacks, 503 while the model loads or when the store (a Milvus server)
fails. No CORS headers: only pages served
from here may call the API.

File names are bytes (:mod:`cbir.core.names`): a URL names a file by the percent-encoding of its
bytes (``bad%FF.jpg``), read here from the raw request (Starlette would decode it as UTF-8 and turn
an undecodable byte into U+FFFD), and the JSON carries an undecodable byte as ``\\udcNN``.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import AsyncGenerator, Awaitable, Callable
from importlib import resources
from urllib.parse import parse_qsl, unquote_to_bytes

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser

from cbir.core.errors import BadImageError, CbirError, QueryError, StoreError
from cbir.core.names import json_text
from cbir.core.types import JSONDict
from cbir.web.collection import NotFound
from cbir.web.model import ModelLoading
from cbir.web.service import Service, UploadTooLarge
from cbir.web.thumbnails import thumbnail

STATUS: dict[type[Exception], int] = {
    NotFound: 404,
    UploadTooLarge: 413,
    ModelLoading: 503,
    StoreError: 503,
    BadImageError: 400,
    QueryError: 400,
}
STATIC = ("index.html", "app.js", "style.css")
TOKEN_COOKIE = "cbir_token"


class NamesJSON(JSONResponse):
    """JSON whose file names keep their bytes (:func:`~cbir.core.names.json_text`)."""

    def render(self, content: JSONDict) -> bytes:
        return json_text(content, allow_nan=False, separators=(",", ":")).encode("utf-8")


def _error(status: int, message: str) -> JSONResponse:
    return NamesJSON({"error": message}, status_code=status)


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


def _static(name: str) -> bytes:
    return resources.files("cbir.web").joinpath("static", name).read_bytes()


def create_app(service: Service, token: str | None = None) -> FastAPI:
    """The app serving ``service``; with ``token``, every request must carry it (header
    ``Authorization: Bearer TOKEN``, the cookie set by opening ``/?token=TOKEN``, or ``?token=``)."""
    app = FastAPI(
        title="cbir", docs_url=None, redoc_url=None, openapi_url=None, default_response_class=NamesJSON
    )

    @app.exception_handler(CbirError)
    async def cbir_error(request: Request, exc: CbirError) -> JSONResponse:
        return _error(_status(exc), str(exc))

    @app.exception_handler(BadImageError)
    async def bad_image(request: Request, exc: BadImageError) -> JSONResponse:
        return _error(400, str(exc))

    if token:
        _require_token(app, token)
    _add_page(app)
    _add_api(app, service)
    _add_files(app, service)
    return app


def _require_token(app: FastAPI, token: str) -> None:
    @app.middleware("http")
    async def check_token(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        given = request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE) or ""
        auth = request.headers.get("authorization", "")
        if auth.startswith("Bearer "):
            given = auth[7:]
        if not hmac.compare_digest(given.encode(), token.encode()):
            return _error(401, "this server needs its token: open the URL it printed")
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response


def _add_page(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(_static("index.html"))

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC:
            return _error(404, "not found")
        kind = {"js": "text/javascript", "css": "text/css", "html": "text/html"}[name.rpartition(".")[2]]
        return Response(_static(name), media_type=f"{kind}; charset=utf-8")


def _add_api(app: FastAPI, service: Service) -> None:
    @app.get("/api/info")
    def info() -> JSONDict:
        return service.info()

    @app.get("/api/browse")
    def browse(request: Request, dir: str = "", page: int = 1) -> JSONDict:
        return service.collection.browse(_query(request, "dir", dir) or "", page)

    @app.get("/api/search")
    def like(request: Request, like: str, k: int = 9, under: str | None = None) -> JSONDict:
        return service.like(_query(request, "like", like) or like, k, _query(request, "under", under))

    @app.post("/api/search")
    async def upload(request: Request, k: int = 9, under: str | None = None) -> JSONDict:
        data, name = await _read_upload(request, service.max_upload_bytes)
        return await run_in_threadpool(service.upload, data, name, k, _query(request, "under", under))

    @app.get("/api/duplicates")
    def duplicates(threshold: float | None = None) -> JSONDict:
        return service.duplicate_groups(threshold)


def _add_files(app: FastAPI, service: Service) -> None:
    @app.get("/thumbs/{rel:path}")
    def thumb(request: Request, rel: str) -> FileResponse:
        rel = _path_name(request, "/thumbs/", rel)
        path = service.collection.file(rel)
        try:
            made = thumbnail(service.collection.cache_dir, rel, path, service.limits)
        except (BadImageError, OSError) as exc:
            raise NotFound(f"no thumbnail for {rel}: {exc}") from None
        return FileResponse(made, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/files/{rel:path}")
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
