"""The REST API: ``create_app`` builds a FastAPI app around one loaded model (and mounts the web app).

Uploads are PNG, JPEG or TIFF by content (415 otherwise), each at most ``max_upload_bytes`` (413); the
whole request body is capped at twice that plus 1 MiB while it streams in, so a client that lies in
Content-Length or sends no length at all is refused too (``BodyLimit`` says how, so that every HTTP client
reads the 413). Every error is JSON ``{"detail": "..."}`` with one line; library errors about the input
(``ChangescopeError``) are 422. A full scene queue is 429 with ``Retry-After``; a server shutting down
answers 503 to new scene jobs.

``/detect`` and ``/ask`` return their overlay inline as ``overlay_png`` (base64 PNG): one round trip, and
the server keeps nothing per request.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import anyio
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from changescope import __version__
from changescope.errors import ChangescopeError
from changescope.serve.service import (
    MAX_HITS,
    Archive,
    ChatSessions,
    Predictor,
    SceneJobs,
    ServiceError,
    change_llm_factory,
    default_agent_factory,
    no_archive,
    png_base64,
    sniff,
)

STATIC = Path(__file__).resolve().parent / "static"
CHUNK = 1 << 20
#: bound of the min_area form fields (numpy compares in int64)
MAX_AREA = 2**31 - 1
#: how much of an over-limit body is read and thrown away before the 413 goes out, in multiples of the
#: limit. Python's HTTP clients send the whole body before they read a reply; a server that answers and
#: closes with body bytes still unread makes the kernel reset the connection, and the client reports
#: "connection reset by peer" instead of the 413 (urllib always: it sends ``Connection: close``; requests
#: and httpx when the reset beats the reply, or the upload outlasts the keep-alive timeout). Reading the
#: rest costs bandwidth, so it stops here: beyond it the reply is sent at once and the connection closed.
DRAIN_FACTOR = 4
#: seconds without a byte after which draining an over-limit body stops (a client that stalls mid-body)
DRAIN_IDLE_SECONDS = 5.0
CLOSE = {"Connection": "close"}


class Error(BaseModel):
    detail: str


class Health(BaseModel):
    status: str
    model: str
    tasks: list[str]
    version: str
    index: dict[str, Any] | None = Field(None, description="the search index served, if any")


class Caption(BaseModel):
    caption: str
    #: "model", or "mask" where the decoder said "no change" against the model's own change mask
    caption_source: str | None = None
    #: the decoder's own caption, when the model has a mask head
    model_caption: str | None = None


class JobCreated(BaseModel):
    job: str
    status_url: str


class JobStatus(BaseModel):
    job: str
    status: str = Field(description="queued, running, done or failed")
    position: int | None = Field(
        None, ge=0, description="while queued: how many jobs run before this one (the running one too)"
    )
    error: str | None = None
    summary: dict[str, Any] | None = None


class ChatRequest(BaseModel):
    session: str | None = Field(None, description="null starts a new session")
    message: str = Field(min_length=1, max_length=4000)


class ChatReply(BaseModel):
    session: str
    reply: str
    tool_calls: list[Any]
    #: a ChangeLLM's reply that states a number: the change mask's reading (``tasks.llm_evidence``)
    citation: dict[str, Any] | None = None


class SessionCreated(BaseModel):
    session: str


class SearchRequest(BaseModel):
    query: str = Field(min_length=1, max_length=512, description="what to find, in words")
    k: int = Field(10, ge=1, le=MAX_HITS, description="how many pairs to return, best first")
    index: str | None = Field(
        None, description="the served index's name (its folder name); optional, another name is 404"
    )


class SearchReply(BaseModel):
    index: str
    query: str
    hits: list[dict[str, Any]] = Field(
        description="best first: rank, score (cosine similarity), id, before, after and what else the index "
        "stores (a scene tile's window and lon/lat footprint)"
    )


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer (all ``{"detail": str}``)."""
    return {code: {"model": Error} for code in (422, *codes)}


UPLOAD_ERRORS = _errors(413, 415)
SCENE_ERRORS = {
    **_errors(413, 415, 503),
    429: {
        "model": Error,
        "description": "the scene queue is full",
        "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
    },
}


class BodyLimit:
    """ASGI middleware: refuse a request body over ``limit`` bytes, from its Content-Length or as it
    streams in, with a 413 ``{"detail": ...}`` every client can read.

    Before answering, the rest of the body is read and thrown away, up to ``DRAIN_FACTOR`` times the limit
    (see there why). A declared length beyond that, or a client that stalls, gets the 413 at once and a
    closed connection. A client that sent ``Expect: 100-continue`` is answered before any body is read:
    uvicorn sends "100 Continue" only when the app first calls ``receive()``, so that body is never sent.
    """

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit
        self.drain = DRAIN_FACTOR * limit

    def _message(self) -> str:
        return f"request body over the limit of {self.limit} bytes"

    def _refusal(self, close: bool) -> JSONResponse:
        return JSONResponse({"detail": self._message()}, 413, headers=CLOSE if close else None)

    async def _read_rest(self, receive, seen: int) -> bool:
        """Read and drop the body to its end (True), unless it passes ``drain`` bytes, stalls or the client
        goes away (False)."""
        while seen <= self.drain:
            message = None
            with anyio.move_on_after(DRAIN_IDLE_SECONDS):
                message = await receive()
            if message is None or message["type"] != "http.request":
                return False
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return seen <= self.drain
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            # with Expect: 100-continue nothing has been sent yet, nor will be if we answer now
            waiting = b"100-continue" in headers.get(b"expect", b"").lower()
            drained = not waiting and int(length) <= self.drain and await self._read_rest(receive, 0)
            return await self._refusal(close=not drained)(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    drained = not message.get("more_body", False) or await self._read_rest(receive, seen)
                    # FastAPI re-raises HTTPExceptions from body parsing, so this becomes a 413 reply
                    raise HTTPException(413, self._message(), headers=None if drained else CLOSE)
            return message

        await self.app(scope, limited_receive, send)


def _save_upload(upload: UploadFile, name: str, folder: Path, limit: int) -> Path:
    """Copy an upload to ``folder/name<suffix>``, checking its type by content and its size as it goes."""
    source = upload.file
    source.seek(0)
    head = source.read(16)
    suffix = sniff(head)
    if suffix is None:
        raise ServiceError(415, f"{name}: not a PNG, JPEG or TIFF file")
    path = folder / f"{name}{suffix}"
    size = len(head)
    with path.open("wb") as out:
        out.write(head)
        while chunk := source.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise ServiceError(413, f"{name}: file over the upload limit of {limit} bytes")
            out.write(chunk)
    return path


def _docs_page() -> str:
    # the stock FastAPI page loads Swagger UI from a CDN; these assets ship in changescope/serve/static
    return """<!doctype html>
<html><head><meta charset="utf-8"><title>changescope API</title>
<link rel="stylesheet" href="static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="static/swagger-ui-bundle.js"></script>
<script>
SwaggerUIBundle({url: "openapi.json", dom_id: "#swagger-ui", validatorUrl: null, deepLinking: true});
</script></body></html>"""


def _change_llm(spec: str | Path) -> Path | None:
    """The folder of the ChangeLLM ``spec`` names, else None (a plain change model)."""
    from changescope.models.llm_hub import is_change_llm
    from changescope.tasks.inference import resolve_model

    path = resolve_model(spec)
    return path if is_change_llm(path) else None


def create_app(
    model: str | Path = "default",
    max_upload_bytes: int = 20 * 2**20,
    workdir: str | Path | None = None,
    agent_factory: Callable[[Path], Any] | None = None,
    web: bool = True,
    agent_options: dict[str, Any] | None = None,
    precision: str | None = None,
    index: str | Path | None = None,
    tta: int | None = None,
) -> FastAPI:
    """The API around ``model`` (loaded once, here; a ChangeLLM answers ``/chat`` and the web app's chat
    itself, seeing the session's images, and its vision model serves the other routes). ``workdir`` holds
    scene jobs and chat sessions (a temporary directory, removed at shutdown, when None).
    ``agent_factory(session_dir)`` builds a chat agent; None uses ``changescope.agent.build_agent`` with
    ``agent_options``. ``web`` mounts the Gradio app at ``/ui``. ``precision`` sets the inference autocast
    of the process's one model, ``tta`` the test-time views its change masks average. ``index`` (a folder
    written by ``changescope index`` with this model) is loaded once, here, for ``/search``, the web app's
    search tab and the chat agent's ``search_archive`` tool; without it ``/search`` answers 404."""
    change_llm = _change_llm(model)
    if change_llm is not None:  # the LM answers /chat; its vision model serves every other route
        from changescope.models.llm_hub import VISION_DIR

        model = change_llm / VISION_DIR
    predictor = Predictor(model)
    if precision is not None:
        predictor.model.set_precision(precision)
    if tta is not None:
        predictor.model.set_tta(tta)
    archive = Archive(index, predictor) if index is not None else None
    if archive is not None and agent_factory is None:
        agent_options = {**(agent_options or {}), "index": str(archive.path)}
    own_workdir = workdir is None
    root = Path(tempfile.mkdtemp(prefix="changescope-serve-") if own_workdir else workdir)
    root.mkdir(parents=True, exist_ok=True)
    jobs = SceneJobs(root / "scenes", model)  # the predictor's model: one copy per process
    if change_llm is not None and agent_factory is None:
        chats = ChatSessions(root / "chat", change_llm_factory(change_llm, predictor), label="ChangeLLM")
    else:
        chats = ChatSessions(root / "chat", agent_factory or default_agent_factory(**(agent_options or {})))
    limit = max_upload_bytes

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        jobs.close()
        if own_workdir:
            shutil.rmtree(root, ignore_errors=True)

    app = FastAPI(
        title="changescope",
        version=__version__,
        description="What changed between two images of one place: captions, change masks, answers, "
        "scenes and a chat agent. Image uploads are PNG, JPEG or TIFF.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.predictor, app.state.jobs, app.state.chats, app.state.workdir = predictor, jobs, chats, root
    app.state.archive = archive
    app.add_middleware(BodyLimit, limit=2 * limit + CHUNK)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, err: ServiceError):
        return JSONResponse({"detail": str(err)}, err.status, headers=err.headers)

    @app.exception_handler(ChangescopeError)
    async def _library_error(_request: Request, err: ChangescopeError):
        return JSONResponse({"detail": str(err)}, 422)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, err: RequestValidationError):
        # one line, e.g. "after: Field required; min_area: Input should be a valid integer"
        parts = []
        for e in jsonable_encoder(err.errors()):
            where = ".".join(str(p) for p in e.get("loc", ())[1:] if not isinstance(p, int)) or "body"
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, 422)

    def uploads(folder: Path, **files: UploadFile) -> dict[str, Path]:
        return {name: _save_upload(upload, name, folder, limit) for name, upload in files.items()}

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(_docs_page())

    @app.get("/health", response_model=Health)
    def health() -> dict[str, Any]:
        return {**predictor.health(), "index": None if archive is None else archive.describe()}

    @app.post("/describe", response_model=Caption, responses=UPLOAD_ERRORS)
    def describe(
        before: UploadFile = File(..., description="image of the earlier date"),
        after: UploadFile = File(..., description="image of the later date, same size"),
    ) -> dict[str, Any]:
        """A sentence saying what changed."""
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            paths = uploads(Path(tmp), before=before, after=after)
            return predictor.describe(paths["before"], paths["after"])

    @app.post("/detect", responses=UPLOAD_ERRORS)
    def detect(
        before: UploadFile = File(...),
        after: UploadFile = File(...),
        min_area: int = Form(
            10, ge=0, le=MAX_AREA, description="drop changed objects under this many pixels"
        ),
        gsd: float | None = Form(
            None,
            gt=0,
            le=10000,
            description="metres per pixel of the images: resampled when far from the model's GSDs, and "
            "picks the default's change head for 5 m or coarser",
        ),
    ) -> dict[str, Any]:
        """Where things changed: per class pixels, percent, objects and boxes (xyxy in [0, 1]), the caption,
        and ``overlay_png``: the after image with the changes tinted, base64-encoded PNG."""
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            paths = uploads(Path(tmp), before=before, after=after)
            result, picture = predictor.detect(paths["before"], paths["after"], min_area, gsd=gsd)
        return {**result, "overlay_png": png_base64(picture)}

    @app.post("/ask", responses=_errors(413, 415, 503))
    def ask(
        before: UploadFile = File(...),
        after: UploadFile = File(...),
        question: str = Form(..., description="a question about the change, at most 512 characters"),
        min_area: int = Form(10, ge=0, le=MAX_AREA),
    ) -> dict[str, Any]:
        """Answer a question about the change; ``overlay_png`` (base64 PNG, or null) shows the region the
        answer refers to."""
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            paths = uploads(Path(tmp), before=before, after=after)
            result, picture = predictor.ask(paths["before"], paths["after"], question, min_area)
        return {**result, "overlay_png": None if picture is None else png_base64(picture)}

    @app.post("/scene", status_code=202, response_model=JobCreated, responses=SCENE_ERRORS)
    def scene(
        request: Request,
        before: UploadFile = File(..., description="GeoTIFF, PNG or JPEG of the earlier date"),
        after: UploadFile = File(..., description="the later date; resampled onto before's grid"),
        bands: str | None = Form(
            None,
            description="1-based band numbers read as R,G,B, e.g. 3,2,1 (default: from the band "
            "descriptions or colour interpretation, else 1,2,3)",
        ),
        bands_b: str | None = Form(None, description="after's own R,G,B band numbers when they differ"),
        stretch: Literal["auto", "none", "percentile"] = Form(
            "auto", description="auto: 16-bit, float and dark 8-bit data stretched; none; percentile"
        ),
        tile: int = Form(256, ge=32, le=2048),
        min_area: int = Form(10, ge=0, le=MAX_AREA),
        max_captions: int = Form(50, ge=0, le=1000),
    ) -> dict[str, Any]:
        """Queue a scene run; poll ``status_url`` until ``done``, then fetch the files its summary lists.
        A full queue is 429 (``Retry-After`` says when to try again)."""
        from changescope.tasks.scene import SceneOptions, parse_bands

        options = SceneOptions(
            bands=parse_bands(bands, "bands"),
            bands_b=parse_bands(bands_b, "bands_b"),
            stretch=stretch,
            tile=tile,
            overlap=min(32, tile // 2 - 1),
            min_area=min_area,
            max_captions=max_captions,
        )
        options.validate()
        job = jobs.new()
        try:
            paths = uploads(job.dir / "input", before=before, after=after)
        except BaseException:
            shutil.rmtree(job.dir, ignore_errors=True)
            raise
        jobs.submit(job, paths["before"], paths["after"], options)
        return {"job": job.id, "status_url": str(request.url_for("scene_status", job=job.id).path)}

    @app.get(
        "/scene/{job}", response_model=JobStatus, response_model_exclude_none=True, responses=_errors(404)
    )
    def scene_status(job: str) -> dict[str, Any]:
        """The job's state; ``position`` while it is queued."""
        return jobs.view(job)

    @app.get("/scene/{job}/files/{name}", response_class=FileResponse, responses=_errors(404))
    def scene_file(job: str, name: str) -> FileResponse:
        """One output of a finished job: a name listed in its summary's ``outputs``."""
        return FileResponse(jobs.output(job, name), filename=name, content_disposition_type="inline")

    @app.post("/search", response_model=SearchReply, responses=_errors(404))
    def search(body: SearchRequest) -> dict[str, Any]:
        """The indexed pairs that best match a sentence, best first; the index is the one the server was
        started with (``changescope serve --index IDX``): without one, 404."""
        if archive is None:
            raise no_archive()
        if body.index is not None and body.index not in (archive.name, str(archive.path)):
            raise ServiceError(404, f"no index '{body.index}' here; this server searches '{archive.name}'")
        return {"index": archive.name, "query": body.query, "hits": archive.search(body.query, body.k)}

    @app.post("/chat/sessions", status_code=201, response_model=SessionCreated, responses=_errors(503))
    async def chat_session() -> dict[str, Any]:
        """Start a chat session (``/chat`` with ``session: null`` also starts one)."""
        session = await run_in_threadpool(chats.open, None)
        return {"session": session.id}

    @app.post(
        "/chat", response_model=ChatReply, response_model_exclude_none=True, responses=_errors(404, 502, 503)
    )
    async def chat(body: ChatRequest) -> dict[str, Any]:
        """One message to the session's agent: its reply and the tools it called."""
        session = await run_in_threadpool(chats.open, body.session)
        return await run_in_threadpool(chats.ask, session, body.message)

    @app.post("/chat/{session}/images", response_model=SessionCreated, responses=_errors(404, 413, 415))
    def chat_images(session: str, before: UploadFile = File(...), after: UploadFile = File(...)):
        """Give the session's agent the image pair its tools work on."""
        current = chats.open(session)
        paths = uploads(chats.image_dir(current), before=before, after=after)
        chats.set_images(current, paths["before"], paths["after"])
        return {"session": current.id}

    if web:
        from changescope.serve.web import mount

        mount(app, predictor, chats, root / "examples", max_upload_bytes, archive=archive)
    return app
