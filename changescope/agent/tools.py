"""Typed tools over the change models, and the session they act on.

The images of a conversation are session state, never tool arguments: a tool takes only small typed
arguments (a class from an enum, a unit from an enum, a short question), which a small model can fill and
which are checked against the tool's JSON schema before anything runs. No tool executes generated code
(Change-Agent ``exec``s LLM-written Python; RS-ChatGPT splits ``"path, category"`` strings): a bad call is
a one-line error returned to the model.

Each tool returns a JSON-able dict and writes its files (PNG overlays, JSON) into the session directory;
paths in results are relative to that directory.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from changescope.errors import ChangescopeError, DataError
from changescope.models.question_encoder import MAX_QUESTION_CHARS
from changescope.postprocess import MIN_AREA
from changescope.tasks.detection import Detection

# the change model is loaded once per process and shared with ``serve`` (its requests, its scene jobs, every
# chat session): reloading the weights per session would cost seconds and memory. ``shared_model`` stays
# importable from here.
from changescope.tasks.inference import shared, shared_model

#: longest free-text argument (a question or a grounding query), as ``tasks.vqa.check_question`` allows
MAX_TEXT = MAX_QUESTION_CHARS


class ToolError(ChangescopeError):
    """A tool call the agent cannot run: unknown tool, bad arguments, or a tool that failed."""


# -- the session ------------------------------------------------------------------------------------


class Session:
    """One conversation's state: the image pair, an optional scene pair, and its artifact directory.

    ``gsd_m`` is the ground size of one pixel in metres when it is known (PNG / JPEG pairs carry none):
    areas in m2 are offered only then. ``index`` is a search index of the model (``changescope index``):
    with it, and a model with a retrieval head, the agent can search that archive (``search_archive``).
    """

    def __init__(
        self,
        directory: str | Path,
        model: str | Path = "default",
        gsd_m: float | None = None,
        min_area: int = MIN_AREA,
        index: str | Path | None = None,
    ):
        if gsd_m is not None and not gsd_m > 0:
            raise ChangescopeError(f"gsd_m must be a positive number of metres, got {gsd_m}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.model_spec = model
        self.gsd_m = gsd_m
        self.index = None if index is None else Path(index)
        if self.index is not None and not (self.index / "index.json").is_file():
            raise DataError(
                self.index, "not a search index (no index.json): build one with changescope index"
            )
        self._archive = None
        self.min_area = min_area
        self.before: Path | None = None
        self.after: Path | None = None
        self.scene: tuple[Path, Path] | None = None
        self._pair_number = 0
        self._outputs = 0
        self._detection: Detection | None = None
        self._detection_written: Path | None = None

    # the model is loaded on first use, so building a session (one per REST client) is instant
    @property
    def model(self):
        return shared_model(self.model_spec)[0]

    @property
    def processor(self):
        return shared_model(self.model_spec)[1]

    @property
    def classes(self) -> list[str]:
        return list(self.model.config.classes)

    def set_images(self, before: str | Path, after: str | Path) -> None:
        """Set the pair every image tool works on; checks both files now (one size, readable)."""
        from changescope.tasks.pairs import check_pair_files

        before, after = Path(before), Path(after)
        for path in (before, after):
            if not path.is_file():
                raise DataError(path, "not found")
        check_pair_files([("pair", before, after)])
        self.before, self.after = before, after
        self._pair_number += 1
        self._detection = None
        self._detection_written = None

    def set_scene(self, before: str | Path, after: str | Path) -> None:
        """Set a scene pair (GeoTIFFs of any size) for ``scene_report``; read only when the tool runs."""
        before, after = Path(before), Path(after)
        for path in (before, after):
            if not path.is_file():
                raise DataError(path, "not found")
        self.scene = (before, after)

    def pair(self) -> tuple[Path, Path]:
        if self.before is None or self.after is None:
            raise ToolError("no images are set: the user must give a before and an after image first")
        return self.before, self.after

    def output_dir(self, kind: str) -> Path:
        """A new directory for one tool output of the current pair, e.g. ``pair-1/answer-2``."""
        self._outputs += 1
        return self.directory / f"pair-{self._pair_number}" / f"{kind}-{self._outputs}"

    def relative(self, path: Path) -> str:
        return path.relative_to(self.directory).as_posix()

    def detection(self) -> Detection:
        """The pair's detection, computed once and shared by detect / count / area tools."""
        from changescope.tasks.detection import detect_pair

        if self._detection is None:
            before, after = self.pair()
            self._detection = detect_pair(self.model, self.processor, before, after, self.min_area)
        return self._detection

    def archive(self):
        """The session's search index, loaded once per process (``shared_index``) and checked once against
        the session's model."""
        if self.index is None:
            raise ToolError("no search index is loaded in this session")
        if self._archive is None:
            from changescope.tasks.search import model_identity

            index = shared_index(self.index)
            model, _, path = shared_model(self.model_spec)
            model.require("retrieval")
            index.check_model(model_identity(model, path))
            self._archive = index
        return self._archive

    def write_detection(self) -> Path:
        """Write mask.png, overlay.png and result.json once per pair; return their directory."""
        from changescope.tasks.detection import write_detection

        detection = self.detection()
        if self._detection_written is None:
            out = self.directory / f"pair-{self._pair_number}" / "detection"
            write_detection(detection, self.classes, out)
            self._detection_written = out
        return self._detection_written


_INDEXES: dict[tuple[Path, int], Any] = {}
_INDEXES_LOCK = threading.Lock()


def shared_index(path: str | Path):
    """The ``PairIndex`` saved in ``path``, loaded once per process (again when the folder is rewritten):
    every chat session of a server searches the one copy."""
    from changescope.retrieval.index import PairIndex

    path = Path(path).resolve()
    try:
        stamp = (path / "index.json").stat().st_mtime_ns
    except OSError:
        stamp = 0  # PairIndex.load says what is missing
    with _INDEXES_LOCK:
        key = (path, stamp)
        if key not in _INDEXES:
            for old in [k for k in _INDEXES if k[0] == path]:
                del _INDEXES[old]
            _INDEXES[key] = PairIndex.load(path)
        return _INDEXES[key]


# -- tools ------------------------------------------------------------------------------------------


@dataclass
class Tool:
    name: str
    description: str
    #: JSON schema of the arguments: an object of string properties (or bounded integers), those in
    #: ``required`` required (the others have defaults)
    parameters: dict[str, Any]
    run: Callable[..., dict[str, Any]]

    def schema(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


def _object(**properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _describe_change(session: Session) -> dict[str, Any]:
    from changescope.tasks.inference import Decoding, caption_pairs

    session.model.require("caption")
    if session.model.mask_head is not None:
        return {"caption": session.detection().result["caption"]}  # one model run serves both
    import torch

    before, after = session.pair()
    pair = session.processor.read_pair(before, after)
    with torch.inference_mode():
        caption = caption_pairs(session.model, session.processor, pair[None], Decoding())[0]
    return {"caption": caption}


def _detect_changes(session: Session) -> dict[str, Any]:
    out = session.write_detection()
    result = session.detection().result
    classes = {}
    for name, row in result["classes"].items():
        classes[name] = {"pixels": row["pixels"], "percent": row["percent"], "objects": row["objects"]}
        if session.gsd_m is not None:
            classes[name]["m2"] = round(row["pixels"] * session.gsd_m**2, 2)
    return {
        "caption": result["caption"],
        "size": result["size"],
        "changed_pixels": result["changed_pixels"],
        "changed_percent": result["changed_percent"],
        "objects": result["objects"],
        "classes": classes,
        "files": {name: session.relative(out / name) for name in ("overlay.png", "mask.png", "result.json")},
    }


def _count_objects(session: Session, cls: str) -> dict[str, Any]:
    return {"class": cls, "count": session.detection().result["classes"][cls]["objects"]}


def _changed_area(session: Session, cls: str, units: str) -> dict[str, Any]:
    if units == "m2" and session.gsd_m is None:
        raise ToolError(
            "the ground resolution of these images is not known, so areas in m2 cannot be given; "
            "use units 'pixels' or 'percent'"
        )
    result = session.detection().result
    if cls == "all":
        pixels, percent = result["changed_pixels"], result["changed_percent"]
    else:
        pixels, percent = result["classes"][cls]["pixels"], result["classes"][cls]["percent"]
    if units == "m2":
        value: float = round(pixels * session.gsd_m**2, 2)
    else:
        value = percent if units == "percent" else pixels
    return {"class": cls, "units": units, "value": value}


def _ask(session: Session, text: str, kind: str) -> tuple[Any, dict[str, Any]]:
    """Run the VQA / grounding heads on the pair; write mask.png, overlay.png, answer.json."""
    from changescope.tasks.vqa import ask_pair, check_question, write_answer

    question = check_question(text)
    before, after = session.pair()
    answer = ask_pair(session.model, session.processor, before, after, question, min_area=session.min_area)
    out = Path(write_answer(answer, session.output_dir(kind)))
    # mask.png and overlay.png exist only when the model grounds
    names = ("overlay.png", "mask.png", "answer.json")
    return answer, {name: session.relative(out / name) for name in names if (out / name).is_file()}


def _answer_question(session: Session, question: str) -> dict[str, Any]:
    answer, files = _ask(session, question, "answer")
    return {**answer.result, "files": files}


def _ground(session: Session, query: str) -> dict[str, Any]:
    answer, files = _ask(session, query, "ground")
    return {"query": answer.result["question"], "grounding": answer.result.get("grounding"), "files": files}


#: the most hits ``search_archive`` returns, and how many without ``k``
MAX_SEARCH_HITS, SEARCH_HITS = 20, 5


def _search_archive(session: Session, query: str, k: int = SEARCH_HITS) -> dict[str, Any]:
    from changescope.tasks.search import query_index

    hits = query_index(session.archive(), session.model, query, k)
    keys = ("rank", "id", "score", "before", "after", "footprint")
    return {
        "query": query,
        "index": session.index.name,
        "hits": [{key: hit[key] for key in keys if hit.get(key) is not None} for hit in hits],
    }


def _scene_report(session: Session) -> dict[str, Any]:
    from changescope.tasks.scene import SceneOptions, run_scene

    if session.scene is None:
        raise ToolError("no scene pair is set")
    a, b = session.scene
    out = session.directory / "scene"
    # the process's loaded model, not a second copy; a later report replaces the earlier one whole
    loaded = shared_model(session.model_spec)
    summary = run_scene(a, b, out, loaded, SceneOptions(), progress=False, overwrite=True)
    # the full summary lists every region; the model gets the totals and the largest few
    regions = [{k: r[k] for k in ("class", "pixels", "area_m2", "caption")} for r in summary["regions"][:5]]
    return {
        "georeferenced": summary["georeferenced"],
        "crs": summary["crs"],
        "size": summary["size"],
        "classes": summary["classes"],
        "regions_total": summary["regions_total"],
        "largest_regions": regions,
        "files": {name: session.relative(out / name) for name in summary["outputs"] if (out / name).exists()},
    }


def available_tools(session: Session) -> list[Tool]:
    """The tools this session's model and state support (VQA / grounding only with those heads; the scene
    report only with a scene pair)."""
    model = session.model
    tasks = set(model.tasks)
    changed = [c for c in session.classes[1:]]  # class 0 is "no change"
    tools: list[Tool] = []
    if "caption" in tasks:
        tools.append(
            Tool(
                "describe_change",
                "Describe in one sentence what changed between the before and the after image.",
                _object(),
                _describe_change,
            )
        )
    if "mask" in tasks:
        tools += [
            Tool(
                "detect_changes",
                "Map every change: changed pixels, percent of the image and number of changed objects for "
                "each class; writes an overlay image.",
                _object(),
                _detect_changes,
            ),
            Tool(
                "count_objects",
                "Count the changed objects (separate regions) of one class.",
                _object(cls={"type": "string", "enum": changed, "description": "the class to count"}),
                _count_objects,
            ),
            Tool(
                "changed_area",
                "How much area changed, for one class or all classes together.",
                _object(
                    cls={"type": "string", "enum": [*changed, "all"], "description": "the class, or all"},
                    units={
                        "type": "string",
                        "enum": ["pixels", "percent", "m2"],
                        "description": "m2 only when the ground resolution is known",
                    },
                ),
                _changed_area,
            ),
        ]
    text = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT}
    if "vqa" in tasks:
        tools.append(
            Tool(
                "answer_question",
                "Answer a short question about the change between the two images.",
                _object(question={**text, "description": "the question, in the user's words"}),
                _answer_question,
            )
        )
    if "grounding" in tasks:
        tools.append(
            Tool(
                "ground",
                "Find where a described change is: a mask, its area and boxes.",
                _object(query={**text, "description": "what to find, e.g. 'new buildings'"}),
                _ground,
            )
        )
    if session.index is not None and "retrieval" in tasks:
        tools.append(
            Tool(
                "search_archive",
                "Search the archive of indexed image pairs for a change described in words; returns the "
                "best-matching pairs' ids, scores (cosine similarity) and image paths, best first.",
                {
                    "type": "object",
                    "properties": {
                        "query": {**text, "description": "the change to find, e.g. 'a new road in a field'"},
                        "k": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_SEARCH_HITS,
                            "description": f"how many pairs to return (default {SEARCH_HITS})",
                        },
                    },
                    "required": ["query"],
                    "additionalProperties": False,
                },
                _search_archive,
            )
        )
    if session.scene is not None and "mask" in tasks:
        tools.append(
            Tool(
                "scene_report",
                "Map the changes over the whole scene (large GeoTIFFs): areas per class, the largest "
                "regions with captions, a report.",
                _object(),
                _scene_report,
            )
        )
    return tools


# -- checking and running a call ----------------------------------------------------------------------


def check_arguments(tool: Tool, arguments: Any) -> dict[str, Any]:
    """The arguments if they fit the tool's schema, else a ToolError saying what is wrong."""
    if not isinstance(arguments, dict):
        raise ToolError(f"{tool.name}: arguments must be a JSON object, got {type(arguments).__name__}")
    properties = tool.parameters["properties"]
    for key in arguments:
        if key not in properties:
            allowed = ", ".join(properties) or "none"
            raise ToolError(f"{tool.name}: unknown argument '{key}' (arguments: {allowed})")
    for key in tool.parameters["required"]:
        if key not in arguments:
            raise ToolError(f"{tool.name}: missing required argument '{key}'")
    checked = dict(arguments)
    for key, value in arguments.items():
        spec = properties[key]
        if spec.get("type") == "integer":  # JSON Schema: any number without a fractional part
            whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
            if isinstance(value, bool) or not whole:
                raise ToolError(
                    f"{tool.name}: argument '{key}' must be a whole number, got {json.dumps(value)}"
                )
            low, high = spec.get("minimum"), spec.get("maximum")
            if (low is not None and value < low) or (high is not None and value > high):
                raise ToolError(
                    f"{tool.name}: argument '{key}' must be {low} to {high}, got {json.dumps(value)}"
                )
            checked[key] = int(value)
            continue
        if not isinstance(value, str):
            raise ToolError(f"{tool.name}: argument '{key}' must be a string, got {json.dumps(value)}")
        if "enum" in spec and value not in spec["enum"]:
            raise ToolError(
                f"{tool.name}: argument '{key}' must be one of {', '.join(spec['enum'])}; got '{value}'"
            )
        if not spec.get("minLength", 0) <= len(value) <= spec.get("maxLength", len(value)):
            raise ToolError(
                f"{tool.name}: argument '{key}' must be {spec.get('minLength', 0)} to "
                f"{spec['maxLength']} characters long"
            )
    return checked


def parse_arguments(raw: Any) -> Any:
    """Tool-call arguments as sent: OpenAI sends a JSON string, some servers (Ollama) an object."""
    if isinstance(raw, dict):
        return raw
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}  # a call without arguments
    if not isinstance(raw, str):
        raise ToolError(f"arguments must be a JSON object, got {json.dumps(raw)}")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise ToolError(
            f"arguments are not valid JSON ({err.msg} at character {err.pos}): {raw[:200]}"
        ) from err


def run_tool(session: Session, tools: list[Tool], name: Any, raw_arguments: Any) -> dict[str, Any]:
    """Run one call; a ``ToolError`` / ``ChangescopeError`` means the call failed and says why in one line.

    Any other exception is a bug in changescope and propagates.
    """
    by_name = {t.name: t for t in tools}
    if name not in by_name:
        raise ToolError(f"unknown tool '{name}'; the tools are: {', '.join(by_name)}")
    tool = by_name[name]
    arguments = check_arguments(tool, parse_arguments(raw_arguments))
    # a tool runs the process's one model under its lock, for the whole call (short on a pair; a
    # scene_report holds it for its scene): a REST server runs other requests on the same model beside it
    with shared(session.model_spec).lock:
        return tool.run(session, **arguments)
