"""The REST API through a real uvicorn server on 127.0.0.1, with the shipped default model.

Chat runs against ``EchoAgent``, a stand-in with the agent interface (``changescope.agent`` is a separate
component); everything of ``changescope.serve`` and the library below it is real. ``/ask`` needs
``changescope.tasks.vqa``: its tests fail with a 503 until that module exists.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import struct
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from changescope import __version__
from changescope.serve.app import create_app

rasterio = pytest.importorskip("rasterio")


class EchoAgent:
    """The agent interface ``/chat`` delegates to: ``set_images`` and ``ask``."""

    def __init__(self, session_dir: Path):
        self.session_dir, self.images = session_dir, None

    def set_images(self, before: str, after: str) -> None:
        self.images = (before, after)

    def ask(self, message: str) -> dict:
        calls = [{"name": "describe", "arguments": {}}] if self.images else []
        return {"reply": f"echo: {message}", "tool_calls": calls}


@contextmanager
def live_server(app, **config):
    """Serve ``app`` with uvicorn on a free port of 127.0.0.1 in a thread; yield its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound before uvicorn starts, so no other process can take the port
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return create_app("default", workdir=tmp_path_factory.mktemp("serve"), agent_factory=EchoAgent, web=False)


@pytest.fixture(scope="module")
def api(app):
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def pair(synth, index: int = 0) -> tuple[Path, Path]:
    name = f"test_{index:06d}.png"
    return synth / "images/test/A" / name, synth / "images/test/B" / name


def files(before: Path | bytes, after: Path | bytes) -> dict:
    def part(name, value):
        data = value if isinstance(value, bytes) else value.read_bytes()
        return (f"{name}.png", data, "application/octet-stream")

    return {"before": part("before", before), "after": part("after", after)}


def noise_png(size: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def one_line_error(response, status: int, *needles: str) -> str:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail
    for needle in needles:
        assert needle in detail, detail
    return detail


# -- what it answers ---------------------------------------------------------------------------------


def test_health(api):
    body = api.get("/health").json()
    assert body["status"] == "ok" and body["version"] == __version__
    assert Path(body["model"]).name == "default" and {"caption", "mask"} <= set(body["tasks"])


def test_describe_matches_the_library(api, app, synth):
    from changescope.tasks.describe import describe_files
    from changescope.tasks.inference import Decoding

    a, b = pair(synth)
    response = api.post("/describe", files=files(a, b))
    assert response.status_code == 200, response.text
    predictor = app.state.predictor
    row = describe_files(predictor.model, predictor.processor, [("pair", a, b)], Decoding())[0]
    assert response.json() == {k: row[k] for k in ("caption", "caption_source", "model_caption")}


def test_detect_result_and_overlay(api, synth):
    a, b = pair(synth, 1)
    response = api.post("/detect", files=files(a, b), data={"min_area": "4"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["min_area"] == 4 and result["size"] == [64, 64] and isinstance(result["caption"], str)
    assert (result["before"], result["after"]) == ("before", "after")  # never a server path
    assert set(result["classes"]) == {"road", "building", "tree", "water"}
    for stats in result["classes"].values():
        assert stats["objects"] == len(stats["boxes"])
    overlay = Image.open(io.BytesIO(base64.b64decode(result["overlay_png"])))
    assert overlay.format == "PNG" and overlay.size == (64, 64)
    for bad in ("-1", "many"):
        one_line_error(api.post("/detect", files=files(a, b), data={"min_area": bad}), 422, "min_area")
    told = api.post("/detect", files=files(a, b), data={"gsd": "10"}).json()  # as detect --gsd
    assert told["gsd"] == 10.0 and result["gsd"] is None
    one_line_error(api.post("/detect", files=files(a, b), data={"gsd": "0"}), 422, "gsd")


def test_ask_answers_or_says_the_model_cannot(api, synth):
    """Needs changescope.tasks.vqa (a 503 without it). A model with neither a VQA nor a grounding head
    says so (422); one with them answers what its heads can."""
    a, b = pair(synth, 1)
    # the question is checked first, whatever the model
    one_line_error(api.post("/ask", files=files(a, b), data={"question": "x" * 513}), 422, "513 characters")
    one_line_error(api.post("/ask", files=files(a, b), data={"question": " "}), 422, "empty")
    response = api.post("/ask", files=files(a, b), data={"question": "How many  buildings were built?"})
    tasks = set(api.get("/health").json()["tasks"])
    if not {"vqa", "grounding"} & tasks:
        one_line_error(response, 422, "no question-answering head")
        return
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["question"] == "How many buildings were built?"
    if "vqa" in tasks:
        assert {"answer", "type", "free_form", "confidence", "number"} <= set(result)
    if "grounding" in tasks:
        assert set(result["grounding"]) >= {"pixels", "percent", "boxes", "empty"}
    if result["overlay_png"] is not None:
        assert Image.open(io.BytesIO(base64.b64decode(result["overlay_png"]))).size == (64, 64)


# -- scene jobs --------------------------------------------------------------------------------------


def wait_for(api, status_url: str, seconds: float = 90) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        body = api.get(status_url).json()
        if body["status"] in ("done", "failed") or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def test_scene_job_runs_to_done_and_serves_its_files(api, synth):
    a, b = pair(synth, 2)
    created = api.post("/scene", files=files(a, b), data={"max_captions": "2", "tile": "64"})
    assert created.status_code == 202, created.text
    job = created.json()
    assert job["status_url"] == f"/scene/{job['job']}"
    status = wait_for(api, job["status_url"])
    assert status["status"] == "done", status
    summary = status["summary"]
    assert summary["size"] == [64, 64] and not summary["georeferenced"]
    assert sorted(summary["outputs"]) == ["changes.geojson", "changes.tif", "report.html", "summary.json"]
    for name in summary["outputs"]:
        got = api.get(f"{job['status_url']}/files/{name}")
        assert got.status_code == 200 and got.content, name
    assert api.get(f"{job['status_url']}/files/summary.json").json() == summary
    assert (
        json.loads(api.get(f"{job['status_url']}/files/changes.geojson").text)["type"] == "FeatureCollection"
    )

    # only listed names, no way out of the job's output folder
    for name in (
        "model.safetensors",
        "..%2Finput%2Fbefore.png",
        "%2E%2E%2F%2E%2E%2Fserve",
        "changes.tif.part",
    ):
        assert api.get(f"{job['status_url']}/files/{name}").status_code == 404, name
    one_line_error(api.get("/scene/no-such-job"), 404, "no-such-job")
    one_line_error(api.get("/scene/no-such-job/files/summary.json"), 404)


def test_scene_job_failure_is_reported_not_raised(api, synth):
    a, _ = pair(synth, 0)
    created = api.post("/scene", files=files(a, noise_png(40)))
    assert created.status_code == 202, created.text
    status = wait_for(api, created.json()["status_url"])
    assert status["status"] == "failed" and "\n" not in status["error"]
    assert status["error"].startswith("after.png: is 40 x 40 pixels")  # the upload's name, not a server path
    assert "summary" not in status


def test_scene_form_values_are_checked_before_queueing(api, synth):
    a, b = pair(synth)
    one_line_error(api.post("/scene", files=files(a, b), data={"bands": "red"}), 422, "bands")
    one_line_error(api.post("/scene", files=files(a, b), data={"bands": "1,2"}), 422, "bands")
    one_line_error(api.post("/scene", files=files(a, b), data={"tile": "8"}), 422, "tile")


@contextmanager
def inference_held():
    """Hold the process's one inference lock (what every model run takes) in this thread."""
    from changescope.tasks.inference import shared

    lock = shared("default").lock
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def wait_until(predicate, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_scene_queue_positions_full_queue_and_shutdown(tmp_path, synth):
    """Jobs wait their turn with a position; one more than ``max_waiting`` is a 429 with Retry-After and a
    one-line count; after close (shutdown) new jobs are 503 and queued ones fail as cancelled."""
    app = create_app(workdir=tmp_path, agent_factory=EchoAgent, web=False)
    jobs = app.state.jobs
    jobs.max_waiting = 3
    a, b = pair(synth, 2)
    form = {"max_captions": "0", "tile": "64"}
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as api:
        with inference_held():  # the first job runs into the lock and stays running
            urls = [api.post("/scene", files=files(a, b), data=form).json()["status_url"] for _ in range(3)]
            wait_until(lambda: api.get(urls[0]).json()["status"] == "running")
            assert "position" not in api.get(urls[0]).json()
            assert [api.get(u).json() for u in urls[1:]] == [
                {"job": u.rsplit("/", 1)[1], "status": "queued", "position": n}
                for n, u in enumerate(urls[1:], 1)
            ]
            full = api.post("/scene", files=files(a, b), data=form)
            detail = one_line_error(full, 429, "3 jobs are queued or running", "at most 3")
            assert int(full.headers["retry-after"]) >= 1 and f"{full.headers['retry-after']} s" in detail
            assert len(list((tmp_path / "scenes").iterdir())) == 3  # the refused upload is not kept
        for u in urls:
            assert wait_for(api, u)["status"] == "done"
        assert api.post("/scene", files=files(a, b), data=form).status_code == 202  # room again
        wait_until(lambda: all(j.status == "done" for j in jobs._jobs.values()))

        with inference_held():
            running, queued = (
                api.post("/scene", files=files(a, b), data=form).json()["status_url"] for _ in "12"
            )
            wait_until(lambda: api.get(running).json()["status"] == "running")
            jobs.close()  # what the server's shutdown does
            one_line_error(api.post("/scene", files=files(a, b), data=form), 503, "shutting down")
            assert api.get(queued).json() == {
                "job": queued.rsplit("/", 1)[1],
                "status": "failed",
                "error": "cancelled: the server shut down before the job started",
            }
        assert wait_for(api, running)["status"] == "done"  # the running one finishes
        schema = api.get("/openapi.json").json()
        assert "position" in schema["components"]["schemas"]["JobStatus"]["properties"]
        assert "Retry-After" in schema["paths"]["/scene"]["post"]["responses"]["429"]["headers"]


# -- clients that go away ----------------------------------------------------------------------------


def deleted_files_open() -> set[str]:
    """Files this process holds open that are deleted (spooled uploads live there)."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("needs /proc")
    held = set()
    for fd in fds.iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        if target.endswith("(deleted)"):
            held.add(fd.name + " " + target)
    return held


def leftovers(root: Path) -> set[Path]:
    """Upload folders under the server's workdir: per-request temporary folders and scene job inputs."""
    return {p for p in root.iterdir() if p.name.startswith("tmp")} | set(root.glob("scenes/*/input/*"))


def test_clients_that_disconnect_mid_upload_or_mid_download(api, app, synth):
    """Half an upload then a closed socket (to /describe and /scene, past the 1 MB a spooled upload keeps
    in memory), or a download dropped after its first bytes: the server goes on serving, and no upload
    files stay behind, on disk or open."""
    import logging

    url = str(api.base_url).rstrip("/")
    host, port = url.removeprefix("http://").split(":")
    root = app.state.workdir
    errors: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = errors.append
    loggers = [logging.getLogger(n) for n in ("uvicorn.error", "changescope.serve")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        before_files, before_open = leftovers(root), deleted_files_open()
        a, b = pair(synth)
        for path in ("/describe", "/scene"):
            # the first file whole, the second begun: 1.5 MB of a declared 3 MB
            body, kind = multipart(
                {"before": a.read_bytes(), "after": b"\x89PNG\r\n\x1a\n" + bytes(3_000_000)}
            )
            head = (
                f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
            )
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(head.encode() + b"\r\n" + body[:1_500_000])
                time.sleep(0.2)  # let the server read it and spool to disk
        # a finished job with a large output, dropped after the first 64 KiB, three times
        job = api.post(
            "/scene", files=files(*pair(synth, 2)), data={"max_captions": "0", "tile": "64"}
        ).json()
        assert wait_for(api, job["status_url"])["status"] == "done"
        big = root / "scenes" / job["job"] / "out" / "report.html"
        big.write_bytes(b"x" * (32 << 20))  # made large here, so no slow scene is needed to get one
        for _ in range(3):
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(
                    f"GET {job['status_url']}/files/report.html HTTP/1.1\r\nHost: t\r\n\r\n".encode()
                )
                assert b" 200 " in sock.recv(65536)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset
        time.sleep(0.5)
        assert api.get("/health").status_code == 200
        assert len(api.get(f"{job['status_url']}/files/report.html").content) == 32 << 20
        assert api.post("/describe", files=files(a, b)).status_code == 200
        assert leftovers(root) == before_files
        assert deleted_files_open() <= before_open
        assert not errors, [r.getMessage() for r in errors]
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


# -- bad input ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_api(tmp_path_factory):
    """A server that takes uploads of at most 16 000 bytes each. Its keep-alive timeout is 1 s (uvicorn's
    default is 5 s): an upload that goes on for longer than that after the server has answered is cut off,
    as a slow link would show with the default."""
    app = create_app(max_upload_bytes=16_000, workdir=tmp_path_factory.mktemp("small"), web=False)
    with (
        live_server(app, timeout_keep_alive=1) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        yield client


def test_upload_over_the_limit_is_413(small_api, synth):
    a, _ = pair(synth)
    big = noise_png(100)  # about 30 kB of incompressible pixels
    one_line_error(small_api.post("/describe", files=files(a, big)), 413, "after", "16000 bytes")
    assert small_api.post("/describe", files=files(a, pair(synth)[1])).status_code == 200


def raw_request(base_url: str, head: str, chunks) -> str:
    """Send a request by hand (lying or missing Content-Length); return the response's status line."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:
            pass  # the server may stop reading once it has answered
        return sock.makefile("rb").readline().decode()


def test_body_limit_holds_without_a_truthful_content_length(small_api):
    url = str(small_api.base_url).rstrip("/")
    boundary = "x" * 16
    start = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=before; filename=a.png\r\n\r\n".encode()
        + b"\x89PNG\r\n\x1a\n"
    )
    head = (
        f"POST /describe HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
    )
    # chunked: no length at all, refused once more than the cap (2 x 16 000 + 1 MiB) has streamed in
    piece = b"\0" * 65536
    chunks = [b"%x\r\n%s\r\n" % (len(start), start)] + [b"%x\r\n%s\r\n" % (len(piece), piece)] * 40
    status = raw_request(url, head + "Transfer-Encoding: chunked\r\n\r\n", [*chunks, b"0\r\n\r\n"])
    assert " 413 " in status, status
    # a declared length over the cap, and past what is drained, is refused before any body is read
    status = raw_request(url, head + "Content-Length: 999999999\r\n\r\n", [start])
    assert " 413 " in status, status


def raw_response(
    base_url: str, head: str, chunks=(), timeout: float = 10
) -> tuple[str, dict[str, str], bytes]:
    """Like ``raw_request``; return the status line, the headers (lower-case names) and the body."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head.encode())
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:
            pass
        reply = sock.makefile("rb")
        status = reply.readline().decode().strip()
        headers = {}
        while (line := reply.readline().decode().strip()) != "":
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, reply.read(int(headers.get("content-length", 0)))


# -- bodies over the limit, as each HTTP client reads them ------------------------------------------

#: the small server's cap on a whole body: 2 x 16 000 + 1 MiB; over-cap bodies here are 2 MB, which
#: BodyLimit reads to the end before answering (it drains up to 4 x the cap)
SMALL_CAP = 2 * 16_000 + 2**20
BOUNDARY = "changescope-test-boundary"


def multipart(parts: dict[str, bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body of file parts, and its Content-Type."""
    body = b"".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in parts.items()
    )
    return body + f"--{BOUNDARY}--\r\n".encode(), f"multipart/form-data; boundary={BOUNDARY}"


def pieces(body: bytes, size: int = 65536):
    """``body`` as an iterator, so a client sends it chunked, with no Content-Length."""
    return (body[i : i + size] for i in range(0, len(body), size))


def post_requests(url: str, parts: dict[str, bytes], chunked: bool, tmp_path: Path) -> tuple[int, str]:
    import requests

    with requests.Session() as session:
        if chunked:
            body, kind = multipart(parts)
            response = session.post(url, data=pieces(body), headers={"Content-Type": kind}, timeout=30)
        else:
            sent = {name: (f"{name}.png", data, "application/octet-stream") for name, data in parts.items()}
            response = session.post(url, files=sent, timeout=30)
        # the connection (kept alive or not) leaves the session usable
        assert session.get(url.rsplit("/", 1)[0] + "/health", timeout=30).status_code == 200
        return response.status_code, response.text


def post_httpx(url: str, parts: dict[str, bytes], chunked: bool, tmp_path: Path) -> tuple[int, str]:
    with httpx.Client(timeout=30) as client:
        if chunked:
            body, kind = multipart(parts)
            response = client.post(url, content=pieces(body), headers={"Content-Type": kind})
        else:
            sent = {name: (f"{name}.png", data, "application/octet-stream") for name, data in parts.items()}
            response = client.post(url, files=sent)
        assert client.get(url.rsplit("/", 1)[0] + "/health").status_code == 200
        return response.status_code, response.text


def post_urllib(url: str, parts: dict[str, bytes], chunked: bool, tmp_path: Path) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    body, kind = multipart(parts)
    # an iterable body without a length goes chunked (urllib also sends Connection: close, always)
    request = urllib.request.Request(
        url, data=pieces(body) if chunked else body, headers={"Content-Type": kind}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def post_curl(url: str, parts: dict[str, bytes], chunked: bool, tmp_path: Path, *extra: str):
    import shutil
    import subprocess

    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    forms = []
    for name, data in parts.items():
        (tmp_path / f"{name}.png").write_bytes(data)
        forms += ["-F", f"{name}=@{tmp_path / f'{name}.png'};type=application/octet-stream"]
    if chunked:
        forms += ["-H", "Transfer-Encoding: chunked"]
    out = subprocess.run(
        [curl, "-sS", "--max-time", "30", "-w", "\n%{http_code} %{size_upload}", *extra, *forms, url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    text, _, tail = out.stdout.rpartition("\n")
    code, uploaded = tail.split()
    post_curl.uploaded = int(uploaded)  # bytes of body curl sent, for the Expect: 100-continue test
    return int(code), text


CLIENTS = {"requests": post_requests, "httpx": post_httpx, "urllib": post_urllib, "curl": post_curl}


@pytest.mark.parametrize("client", list(CLIENTS))
@pytest.mark.parametrize("case", ["declared length", "chunked", "one file over the limit"])
def test_every_client_reads_the_413(small_api, synth, tmp_path, client, case):
    """Clients that send the whole body before reading (requests, httpx, urllib) read the 413 and its
    one-line detail, not "connection reset by peer"; so does curl."""
    a, _ = pair(synth)
    url = str(small_api.base_url).rstrip("/") + "/describe"
    if case == "one file over the limit":
        parts, needles = {"before": a.read_bytes(), "after": noise_png(100)}, ("after", "16000 bytes")
    else:  # a whole body over the cap: refused by BodyLimit from its Content-Length or as it streams in
        over = b"\x89PNG\r\n\x1a\n" + bytes(4_000_000)
        parts, needles = {"before": a.read_bytes(), "after": over}, ("request body over the limit",)
    status, text = CLIENTS[client](url, parts, case == "chunked", tmp_path)
    assert status == 413, text
    detail = json.loads(text)["detail"]
    assert isinstance(detail, str) and "\n" not in detail and all(n in detail for n in needles), detail


def slowly(body: bytes, seconds: float):
    """``body`` in 64 KiB pieces spread over about ``seconds``: an upload over a slow link."""
    chunks = list(pieces(body))
    for chunk in chunks:
        time.sleep(seconds / len(chunks))
        yield chunk


def test_a_slow_upload_over_the_cap_still_reads_the_413(small_api, synth):
    """The body goes on arriving for longer than the keep-alive timeout: answered only once it is all read,
    the client reads the 413 (answered at once, the connection would be cut mid-upload)."""
    import requests

    a, _ = pair(synth)
    body, kind = multipart({"before": a.read_bytes(), "after": b"\x89PNG\r\n\x1a\n" + bytes(3_000_000)})
    url = str(small_api.base_url).rstrip("/") + "/describe"
    declared = {"Content-Type": kind, "Content-Length": str(len(body))}
    response = httpx.post(url, content=slowly(body, 1.5), headers=declared, timeout=30)
    one_line_error(response, 413, "request body over the limit")
    response = requests.post(
        url, data=slowly(body, 1.5), headers={"Content-Type": kind}, timeout=30
    )  # chunked
    one_line_error(response, 413, "request body over the limit")


@pytest.mark.parametrize("client", ["requests", "httpx"])
def test_python_clients_read_the_415(small_api, synth, tmp_path, client):
    _, b = pair(synth)
    url = str(small_api.base_url).rstrip("/") + "/describe"
    status, text = CLIENTS[client](
        url, {"before": b"hello, not an image", "after": b.read_bytes()}, False, tmp_path
    )
    assert status == 415, text
    assert json.loads(text) == {"detail": "before: not a PNG, JPEG or TIFF file"}


def test_expect_100_continue_is_refused_before_the_body_is_sent(small_api, synth, tmp_path):
    """A declared length over the cap with ``Expect: 100-continue`` is answered at once: no "100 Continue",
    so the client never sends the body."""
    url = str(small_api.base_url).rstrip("/")
    head = (
        f"POST /describe HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {2 * SMALL_CAP}\r\nExpect: 100-continue\r\n\r\n"
    )
    started = time.monotonic()
    status, headers, body = raw_response(url, head, timeout=3)  # sends no body at all
    assert " 413 " in status and headers.get("connection") == "close", (status, headers)
    assert "request body over the limit" in json.loads(body)["detail"]
    assert time.monotonic() - started < 2
    # curl sends Expect: 100-continue for large bodies: it gets the 413 having sent (almost) nothing
    a, _ = pair(synth)
    parts = {"before": a.read_bytes(), "after": b"\x89PNG\r\n\x1a\n" + bytes(2_000_000)}
    status, text = post_curl(url + "/describe", parts, False, tmp_path, "-H", "Expect: 100-continue")
    assert status == 413 and "request body over the limit" in json.loads(text)["detail"], text
    assert post_curl.uploaded < SMALL_CAP, post_curl.uploaded
    # without Expect, curl sends the body, which is read to the end before the 413
    status, text = post_curl(url + "/describe", parts, False, tmp_path, "-H", "Expect:")
    assert status == 413 and post_curl.uploaded > 2_000_000, (text, post_curl.uploaded)


def test_bodies_past_the_drain_bound_or_stalled_get_the_413_and_a_close(small_api, monkeypatch):
    from changescope.serve import app as app_module

    monkeypatch.setattr(app_module, "DRAIN_IDLE_SECONDS", 0.3)
    url = str(small_api.base_url).rstrip("/")
    head = (
        f"POST /describe HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
    )
    # declared far past the bound: answered at once, nothing read, and the connection closed
    status, headers, body = raw_response(url, head + "Content-Length: 999999999\r\n\r\n")
    assert " 413 " in status and headers["connection"] == "close", (status, headers)
    assert json.loads(body)["detail"] == f"request body over the limit of {SMALL_CAP} bytes"
    # a client that stops sending halfway through a declared 2 MB body: answered once it has been idle
    status, headers, body = raw_response(
        url, head + "Content-Length: 2000000\r\n\r\n", [bytes(1_500_000)], timeout=5
    )
    assert " 413 " in status and headers["connection"] == "close", (status, headers)
    # the same with no length at all (chunked), stalled after the cap has passed
    start, _ = multipart({"before": b"\x89PNG\r\n\x1a\n"})
    start = start[: start.index(b"PNG") + 7]  # one file part, begun and never ended
    chunks = [b"%x\r\n%s\r\n" % (len(c), c) for c in (start, *[bytes(65536)] * 20)]
    status, headers, body = raw_response(url, head + "Transfer-Encoding: chunked\r\n\r\n", chunks)
    assert " 413 " in status and headers["connection"] == "close", (status, headers)
    assert small_api.get("/health").status_code == 200


def test_wrong_type_missing_field_and_corrupt_image(api, synth):
    a, b = pair(synth)
    text = {"before": ("notes.txt", b"hello, not an image", "text/plain"), "after": ("b.png", b.read_bytes())}
    one_line_error(api.post("/describe", files=text), 415, "before", "PNG, JPEG or TIFF")
    one_line_error(api.post("/describe", files={"before": ("a.png", a.read_bytes())}), 422, "after")
    one_line_error(api.post("/detect", data={"min_area": "3"}), 422, "before", "after")
    corrupt = b"\x89PNG\r\n\x1a\n" + b"\0" * 200
    detail = one_line_error(
        api.post("/describe", files=files(a, corrupt)), 422, "after: not a readable image"
    )
    assert "/tmp" not in detail and "serve" not in detail  # names the field, not a server path
    one_line_error(api.post("/describe", files=files(a, noise_png(50))), 422, "after", "50x50")


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels and holds none."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def test_huge_image_dimensions_are_refused_from_the_header(api, synth):
    a, _ = pair(synth)
    one_line_error(api.post("/describe", files=files(a, png_header(5000, 5000))), 413, "after", "5000x5000")
    # past Pillow's decompression-bomb threshold: refused the same way, nothing decoded
    one_line_error(api.post("/detect", files=files(png_header(30000, 30000), a)), 413, "before", "too large")


def test_fuzz_damaged_images_and_form_values(api, synth):
    """Hypothesis: real PNGs cut short or with bytes overwritten, odd min_area values: never a 5xx."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    good_a, good_b = (p.read_bytes() for p in pair(synth))
    n = len(good_b)

    @settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(
        cut=st.integers(8, n),
        writes=st.lists(st.tuples(st.integers(8, n - 1), st.integers(0, 255)), max_size=4),
        min_area=st.one_of(st.integers(-10, 10**30).map(str), st.text(max_size=6)),
        endpoint=st.sampled_from(["/describe", "/detect"]),
    )
    def check(cut, writes, min_area, endpoint):
        damaged = bytearray(good_b[:cut])
        for position, value in writes:
            if position < len(damaged):
                damaged[position] = value
        response = api.post(endpoint, files=files(good_a, bytes(damaged)), data={"min_area": min_area})
        assert response.status_code < 500, response.text

    check()


# -- concurrency -------------------------------------------------------------------------------------


def test_twenty_concurrent_describes_agree(api, synth):
    pairs = [pair(synth, 0), pair(synth, 3)]
    expected = [api.post("/describe", files=files(*p)).json()["caption"] for p in pairs]

    def describe(i: int):
        return i % 2, api.post("/describe", files=files(*pairs[i % 2]))

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(describe, range(20)))
    assert all(r.status_code == 200 for _, r in results), [r.text for _, r in results]
    assert all(r.json()["caption"] == expected[k] for k, r in results)


# -- chat --------------------------------------------------------------------------------------------


def test_chat_session_images_and_errors(api, synth):
    first = api.post("/chat", json={"session": None, "message": "hello"})
    assert first.status_code == 200, first.text
    session = first.json()["session"]
    assert first.json() == {"session": session, "reply": "echo: hello", "tool_calls": []}
    a, b = pair(synth)
    assert api.post(f"/chat/{session}/images", files=files(a, b)).json() == {"session": session}
    second = api.post("/chat", json={"session": session, "message": "what changed?"}).json()
    assert second["tool_calls"] == [{"name": "describe", "arguments": {}}]
    one_line_error(api.post("/chat", json={"session": "nope", "message": "hi"}), 404, "nope")
    one_line_error(api.post("/chat/nope/images", files=files(a, b)), 404)
    one_line_error(api.post("/chat", json={"session": session, "message": ""}), 422, "message")
    one_line_error(api.post("/chat", content=b"{not json", headers={"content-type": "application/json"}), 422)
    assert api.post("/chat/sessions").status_code == 201


def test_chat_without_an_agent_module_is_503(tmp_path, monkeypatch):
    # the agent extra cannot be uninstalled for one test: a None entry in sys.modules makes its import
    # fail as a missing package does
    monkeypatch.setitem(sys.modules, "changescope.agent", None)
    from fastapi.testclient import TestClient

    with TestClient(create_app(workdir=tmp_path, web=False)) as client:
        one_line_error(client.post("/chat", json={"message": "hi"}), 503, "changescope.agent")


# -- one model per process ----------------------------------------------------------------------------


def test_one_model_and_one_lock_per_process(tmp_path, synth, monkeypatch):
    """/describe, a /chat turn whose agent calls a tool, and a scene job all run one loaded model (loaded
    once), under one lock: while it is held, none of them gets through."""
    from test_agent import ScriptedLLM, call, text

    from changescope.tasks import inference

    loaded = inference.shared("default")  # loaded once here (or by an earlier test); nothing loads again
    loads = []
    real_load = inference.load
    monkeypatch.setattr(inference, "load", lambda spec: loads.append(spec) or real_load(spec))
    llm = ScriptedLLM([call("detect_changes", "{}"), text("Buildings appeared.")])
    app = create_app("default", workdir=tmp_path, web=False, agent_options={"llm_url": llm.url})
    a, b = pair(synth, 1)
    try:
        with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as api:
            session = api.post("/chat/sessions").json()["session"]
            assert api.post(f"/chat/{session}/images", files=files(a, b)).status_code == 200
            with ThreadPoolExecutor(3) as pool, inference_held():  # released before the pool is joined
                described = pool.submit(api.post, "/describe", files=files(a, b))
                chatted = pool.submit(
                    api.post, "/chat", json={"session": session, "message": "what changed?"}
                )
                created = api.post("/scene", files=files(a, b), data={"max_captions": "1", "tile": "64"})
                time.sleep(0.7)
                assert not described.done() and not chatted.done()
                assert api.get(created.json()["status_url"]).json()["status"] == "running"
            assert described.result().status_code == 200, described.result().text
            reply = chatted.result().json()
            assert reply["reply"] == "Buildings appeared.", reply
            assert "error" not in reply["tool_calls"][0] and reply["tool_calls"][0]["result"]["classes"]
            status = wait_for(api, created.json()["status_url"])
            assert status["status"] == "done", status

        agent = app.state.chats._sessions[session].agent
        assert agent.session.model is loaded.model is app.state.predictor.model
        assert app.state.predictor.processor is loaded.processor and app.state.predictor._lock is loaded.lock
        assert status["summary"]["model"] == str(loaded.path)
        assert loads == []  # the predictor, the scene job and the agent loaded no copy of their own
    finally:
        llm.close()


# -- docs and schema ---------------------------------------------------------------------------------


def test_docs_page_is_served_offline(api):
    page = api.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert (
        "http://" not in page.text and "https://" not in page.text and "//" not in page.text.replace("<!", "")
    )
    for asset in ("static/swagger-ui-bundle.js", "static/swagger-ui.css"):
        response = api.get(f"/{asset}")
        assert response.status_code == 200 and len(response.content) > 100_000


def test_openapi_schema_is_valid_and_complete(api):
    import schemathesis

    schema = api.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    assert {"/health", "/describe", "/detect", "/ask", "/scene", "/scene/{job}", "/chat"} <= set(
        schema["paths"]
    )
    loaded = schemathesis.openapi.from_dict(schema)
    assert all(result.ok() for result in loaded.get_all_operations())


def test_fuzz_no_server_errors(api):
    """Schemathesis-generated requests (valid and invalid by the schema) to every operation: never 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.generation import GenerationMode

    schema = base_url = str(api.base_url).rstrip("/")
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    for result in schema.get_all_operations():
        operation = result.ok()
        strategy = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(
            GenerationMode.NEGATIVE
        )

        @settings(max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def check(case):
            response = case.call(base_url=base_url, timeout=30)
            assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text[:200]}"

        check()
