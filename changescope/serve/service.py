"""What the REST API and the web app both do, free of HTTP: one model shared by every request, scene jobs
run one at a time in a background thread, chat sessions kept in memory.

The model is the process's one copy (``tasks.inference.shared``): the predictor, the scene jobs and every
chat agent's tools run the same object, so the weights are in memory once. Inference is serialised by that
model's one lock. The model itself would mostly be fine under concurrent calls (``inference_mode``, no state
written), but a lock makes that true by construction, costs nothing on a CPU that one forward pass already
keeps busy, and keeps peak memory at one batch. File reading and writing stay outside the lock. A scene
job takes the lock per batch of tiles or captions (``_Serialised``), not for its whole run: a scene can
take minutes, and the single-pair requests that arrive meanwhile are answered between its batches.
"""

from __future__ import annotations

import base64
import contextlib
import inspect
import io
import logging
import math
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from changescope import __version__
from changescope.errors import ChangescopeError, DataError
from changescope.tasks.describe import iter_descriptions
from changescope.tasks.inference import Decoding, shared

log = logging.getLogger("changescope.serve")

#: largest image (width x height) the single-pair endpoints read into memory; scenes are tiled instead
MAX_PIXELS = 4096 * 4096

#: leading bytes of the formats accepted as uploads (content, not the file name, decides)
MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
    (b"II+\x00", ".tif"),  # BigTIFF
    (b"MM\x00+", ".tif"),
)


class ServiceError(ChangescopeError):
    """A one-line error with the HTTP status it maps to (413, 415, 429, 503, ...)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        self.status, self.headers = status, headers
        super().__init__(message)


def sniff(head: bytes) -> str | None:
    """The file suffix for PNG / JPEG / TIFF content, else None."""
    return next((suffix for magic, suffix in MAGIC if head.startswith(magic)), None)


def check_pixels(path: Path, name: str) -> None:
    """Refuse images too large to read whole, from the header only (also stops decompression bombs)."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Image.DecompressionBombError:
        width = height = None
    except Exception as err:  # Pillow raises many types for broken headers; read_rgb words them later
        raise DataError(name, f"not a readable image ({err.__class__.__name__}: {err})") from None
    if width is None or width * height > MAX_PIXELS:
        size = "" if width is None else f" ({width}x{height})"
        raise ServiceError(
            413,
            f"{name}: image too large{size}; at most {MAX_PIXELS} pixels here, send large scenes to /scene",
        )


@contextlib.contextmanager
def named_inputs(names: dict[Path, str]) -> Iterator[None]:
    """Re-word a DataError about a temporary upload path with the name the user knows it by."""
    try:
        yield
    except DataError as err:
        problem = err.problem  # Pillow's messages repeat the path
        for path, name in names.items():
            problem = problem.replace(str(path), name)
        raise DataError(names.get(err.path, err.path), problem) from None


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class Predictor:
    """The loaded model and what can be asked of it; every method takes image files."""

    def __init__(self, spec: str | Path):
        loaded = shared(spec)  # the process's one copy, and its lock
        self.model, self.processor, self.path = loaded.triple()
        self._lock = loaded.lock

    @property
    def classes(self) -> list[str]:
        return list(self.model.config.classes)

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "model": str(self.path),
            "tasks": list(self.model.tasks),
            "version": __version__,
        }

    @contextlib.contextmanager
    def _inputs(self, before: Path, after: Path, names: tuple[str, str]) -> Iterator[None]:
        """Refuse oversized images from their headers; word read errors by the inputs' names."""
        with named_inputs({before: names[0], after: names[1]}):
            check_pixels(before, names[0])
            check_pixels(after, names[1])
            yield

    def describe(self, before: Path, after: Path, names=("before", "after")) -> dict[str, Any]:
        """As ``changescope describe``: with a mask head, a "no change" caption that the model's own change
        mask contradicts is written from the mask (``caption_source``)."""
        self.model.require("caption")
        with self._inputs(before, after, names), self._lock:
            row = next(iter_descriptions(self.model, self.processor, [("pair", before, after)], Decoding()))
        return {k: row[k] for k in ("caption", "caption_source", "model_caption") if k in row}

    def detect(
        self, before: Path, after: Path, min_area: int, names=("before", "after"), gsd: float | None = None
    ) -> tuple[dict[str, Any], Image.Image]:
        """The ``detect_pair`` result (input names instead of server paths) and the overlay image; ``gsd``
        as ``detect --gsd``."""
        from changescope.overlay import overlay
        from changescope.tasks.detection import detect_pair

        self.model.require("mask")
        with self._inputs(before, after, names), self._lock:
            detection = detect_pair(self.model, self.processor, before, after, min_area, gsd=gsd)
        result = {**detection.result, "before": names[0], "after": names[1], "model": str(self.path)}
        return result, overlay(detection.image, detection.mask, self.classes)

    def ask(
        self, before: Path, after: Path, question: str, min_area: int, names=("before", "after")
    ) -> tuple[dict[str, Any], Image.Image | None]:
        """The answer (``vqa`` head) and where it is (``grounding`` head, drawn over the after image);
        a model with either head answers what it can."""
        try:
            from changescope.tasks.vqa import ask_pair, check_question
        except ImportError as err:
            raise ServiceError(503, f"questions need changescope.tasks.vqa, missing here ({err})") from None
        from changescope.overlay import overlay

        question = check_question(question)
        if not {"vqa", "grounding"} & set(self.model.tasks):
            self.model.require("vqa")
        with self._inputs(before, after, names), self._lock:
            answer = ask_pair(self.model, self.processor, before, after, question, min_area)
        picture = None
        if answer.mask is not None:
            mask = answer.mask.astype(np.uint8)
            picture = overlay(answer.image, mask, ["no change", "answer region"])
        return answer.result, picture


# -- language search ----------------------------------------------------------------------------------


#: the most hits one search returns
MAX_HITS = 100


class Archive:
    """A search index (``changescope index``) served with the predictor's model: loaded once, here, and
    checked against that model (an index built by another model is refused at start, in one line)."""

    def __init__(self, path: str | Path, predictor: Predictor):
        from changescope.retrieval.index import PairIndex
        from changescope.tasks.search import model_identity

        predictor.model.require("retrieval")
        self.path = Path(path)
        self.name = self.path.name
        self.index = PairIndex.load(self.path)
        self.index.check_model(model_identity(predictor.model, predictor.path))
        self.predictor = predictor

    def describe(self) -> dict[str, Any]:
        return {"index": self.name, "pairs": len(self.index)}

    def search(self, query: str, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` best hits, best first (``tasks.search.query_index``); the query is embedded under the
        model's lock, the index is searched outside it."""
        from changescope.tasks.search import query_index

        if not 1 <= k <= MAX_HITS:
            raise ServiceError(422, f"k must be 1..{MAX_HITS}, got {k}")
        predictor = self.predictor
        return query_index(self.index, predictor.model, query, k, lock=predictor._lock)


def no_archive() -> ServiceError:
    return ServiceError(404, "this server has no search index: start it with 'changescope serve --index IDX'")


# -- scene jobs ---------------------------------------------------------------------------------------


@dataclass
class Job:
    id: str
    dir: Path
    status: str = "queued"  # queued | running | done | failed
    error: str | None = None
    summary: dict[str, Any] | None = None
    started: float | None = None

    def view(self, position: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"job": self.id, "status": self.status}
        if position is not None:
            out["position"] = position
        if self.error is not None:
            out["error"] = self.error
        if self.summary is not None:
            out["summary"] = self.summary
        return out


class _Serialised:
    """The model with each forward pass and each ``generate`` call taken under ``lock``: what a scene job
    hands ``run_scene`` (those are the two ways the scene pipeline runs a model), so the lock is held per
    batch and the reading, blending and polygonizing between batches run outside it."""

    def __init__(self, model, lock):
        self._model, self._lock = model, lock

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def __call__(self, *args, **kwargs):
        with self._lock:
            return self._model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with self._lock:
            return self._model.generate(*args, **kwargs)


class SceneJobs:
    """Scene runs queued on one worker thread (a scene already uses every core it is given). A job's
    uploads are removed when it ends; its outputs stay until it is pruned.

    At most ``max_waiting`` jobs are queued or running; one more is refused (429, with ``Retry-After``).
    After ``close`` (the server is shutting down) new jobs are refused (503) and queued ones fail as
    cancelled."""

    #: seconds a client is told to wait when the queue is full and no job has finished yet to time
    RETRY_AFTER_DEFAULT = 30

    def __init__(self, root: Path, model: str | Path, max_waiting: int = 8, max_kept: int = 32):
        self.root, self.model_spec = root, model
        self.max_waiting, self.max_kept = max_waiting, max_kept
        self._jobs: dict[str, Job] = {}  # in submission order, which is the order they run in
        self._durations: list[float] = []  # of the last few runs, for Retry-After
        self._closed = False
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="changescope-scene")

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise ServiceError(503, "the server is shutting down and takes no new scene jobs")

    def new(self) -> Job:
        """A job with its directory, not yet queued (uploads go into ``job.dir / 'input'``)."""
        self._refuse_if_closed()
        job_id = uuid.uuid4().hex
        job = Job(job_id, self.root / job_id)
        (job.dir / "input").mkdir(parents=True)
        return job

    def _retry_after(self) -> int:
        """Seconds until a place in the queue is likely free: the mean time of the last few runs."""
        if not self._durations:
            return self.RETRY_AFTER_DEFAULT
        return max(1, min(3600, math.ceil(sum(self._durations) / len(self._durations))))

    def submit(self, job: Job, before: Path, after: Path, options) -> Job:
        with self._lock:
            try:
                self._refuse_if_closed()
                waiting = sum(j.status in ("queued", "running") for j in self._jobs.values())
                if waiting >= self.max_waiting:
                    seconds = self._retry_after()
                    raise ServiceError(
                        429,
                        f"the scene queue is full: {waiting} jobs are queued or running (at most "
                        f"{self.max_waiting}); try again in about {seconds} s",
                        headers={"Retry-After": str(seconds)},
                    )
            except ServiceError:
                shutil.rmtree(job.dir, ignore_errors=True)
                raise
            self._jobs[job.id] = job
            self._prune()
            self._pool.submit(self._run, job, before, after, options)
        return job

    def _prune(self) -> None:
        """Forget the oldest finished jobs and their files beyond ``max_kept`` (a server runs for weeks)."""
        finished = [j for j in self._jobs.values() if j.status in ("done", "failed")]
        for job in finished[: max(0, len(finished) - self.max_kept)]:
            del self._jobs[job.id]
            shutil.rmtree(job.dir, ignore_errors=True)

    def _run(self, job: Job, before: Path, after: Path, options) -> None:
        from changescope.tasks.scene import run_scene

        with self._lock:
            if job.status != "queued":  # cancelled by close() after it was handed to the worker
                return
            job.status, job.started = "running", time.monotonic()
        try:
            loaded = shared(self.model_spec)  # the process's one copy: no second load
            model = (_Serialised(loaded.model, loaded.lock), loaded.processor, loaded.path)
            job.summary = run_scene(before, after, job.dir / "out", model, options, progress=False)
            job.status = "done"
        except ChangescopeError as err:
            # name the uploads as the client sent them, not by their place on this server
            job.error, job.status = str(err).replace(f"{before.parent}/", ""), "failed"
        except Exception as err:  # a job must end in a state the client can read, whatever happened
            log.exception("scene job %s failed", job.id)
            job.error, job.status = f"internal error: {err.__class__.__name__}: {err}", "failed"
        finally:
            shutil.rmtree(job.dir / "input", ignore_errors=True)  # the uploads are not needed any more
        with self._lock:
            self._durations = [*self._durations[-7:], time.monotonic() - job.started]

    def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise ServiceError(404, f"no scene job '{job_id}'")
        return job

    def view(self, job_id: str) -> dict[str, Any]:
        """The job's state; while queued, ``position``: how many jobs run before it (the running one too)."""
        with self._lock:
            job = self.get(job_id)
            position = None
            if job.status == "queued":
                ahead = []
                for other in self._jobs.values():
                    if other is job:
                        break
                    ahead.append(other)
                position = sum(j.status in ("queued", "running") for j in ahead)
            return job.view(position)

    def output(self, job_id: str, name: str) -> Path:
        """An output file of a finished job; only names its summary lists (so no path can escape)."""
        job = self.get(job_id)
        if job.status != "done" or name not in job.summary.get("outputs", []):
            raise ServiceError(404, f"scene job '{job_id}' has no output named '{name}'")
        return job.dir / "out" / name

    def close(self) -> None:
        """Take no new jobs; cancel the queued ones (the running one finishes in its thread)."""
        with self._lock:
            self._closed = True
            for job in self._jobs.values():
                if job.status == "queued":
                    job.status, job.error = "failed", "cancelled: the server shut down before the job started"
                    shutil.rmtree(job.dir / "input", ignore_errors=True)
        self._pool.shutdown(wait=False, cancel_futures=True)


# -- chat ---------------------------------------------------------------------------------------------


@dataclass
class Session:
    id: str
    dir: Path
    agent: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    uploads: int = 0


AgentFactory = Callable[[Path], Any]


def default_agent_factory(**options: Any) -> AgentFactory:
    """``changescope.agent.build_agent`` with the options it accepts (imported on first use)."""

    def build(session_dir: Path):
        try:
            from changescope.agent import build_agent
        except ImportError as err:
            raise ServiceError(503, f"chat needs changescope.agent, missing here ({err})") from None
        accepted = inspect.signature(build_agent).parameters
        kwargs = {k: v for k, v in options.items() if v is not None and k in accepted}
        return build_agent(session_dir, **kwargs)

    return build


def change_llm_factory(path: Path, predictor: Predictor) -> AgentFactory:
    """Chat sessions with the ChangeLLM saved in ``path``, loaded here, once: its vision model is the
    predictor's (``path/vision``, one copy in memory) and its inference runs under the predictor's lock.
    Each session is a ``tasks.llm_inference.ChangeLLMChat``: the LM sees the session's images."""
    from changescope.models.llm_hub import load_change_llm
    from changescope.tasks.llm_inference import ChangeLLMChat

    model, processor = load_change_llm(path, vision=(predictor.model, predictor.processor))

    def build(_session_dir: Path):
        return ChangeLLMChat(model, processor, lock=predictor._lock)

    return build


def _llm_failed(err: Exception) -> bool:
    try:
        from changescope.agent.llm import LLMError
    except ImportError:
        return False
    return isinstance(err, LLMError)


class ChatSessions:
    """In-memory chat sessions, each with an agent and a directory; the least recently used go first."""

    def __init__(self, root: Path, factory: AgentFactory, max_sessions: int = 64, label: str = "agent"):
        self.root, self.factory, self.max_sessions = root, factory, max_sessions
        #: who answers, as the web app names it
        self.label = label
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, session_id: str | None) -> Session:
        """The session ``session_id``, or a new one when it is None."""
        with self._lock:
            if session_id is not None:
                session = self._sessions.get(session_id)
                if session is None:
                    raise ServiceError(404, f"no chat session '{session_id}'")
                self._sessions.move_to_end(session_id)
                return session
        new_id = uuid.uuid4().hex
        directory = self.root / new_id
        directory.mkdir(parents=True)
        try:
            agent = self.factory(directory)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        session = Session(new_id, directory, agent)
        with self._lock:
            self._sessions[new_id] = session
            while len(self._sessions) > self.max_sessions:
                _, old = self._sessions.popitem(last=False)
                shutil.rmtree(old.dir, ignore_errors=True)
        return session

    def image_dir(self, session: Session) -> Path:
        """A fresh folder for the next pair (the agent may still hold the paths of the last one)."""
        with session.lock:
            session.uploads += 1
            directory = session.dir / f"images-{session.uploads}"
        directory.mkdir()
        return directory

    def set_images(self, session: Session, before: Path, after: Path) -> None:
        with session.lock:
            session.agent.set_images(str(before), str(after))

    def ask(self, session: Session, message: str) -> dict[str, Any]:
        with session.lock:
            try:
                answer = session.agent.ask(message)
            except ChangescopeError as err:
                if _llm_failed(err):  # the language model server, not the message, is at fault
                    raise ServiceError(502, f"the language model failed: {err}") from None
                raise
        return {
            "session": session.id,
            "reply": str(answer.get("reply", "")),
            "tool_calls": list(answer.get("tool_calls", [])),
            "citation": answer.get("citation"),
        }
