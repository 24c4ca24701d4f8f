"""The agent loop: a user message -> model calls and typed tool calls -> a reply.

Native mode sends OpenAI ``tools`` and reads ``message.tool_calls``. ReAct mode (for servers without tool
calling: chosen when the server rejects ``tools`` with a 4xx, or by ``tool_mode="react"``) describes the
tools in the prompt and parses ``Action:`` / ``Action Input:`` / ``Final Answer:`` strictly. In both, every
malformed call (unknown tool, arguments that are not JSON, a value outside its enum, a missing argument) and
every tool failure (``ChangescopeError``) goes back to the model as an error it can correct; the loop
stops after ``max_steps`` model calls. Nothing the model writes is ever evaluated or executed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from changescope.agent.llm import ChatClient, ToolsRejected
from changescope.agent.tools import Session, Tool, ToolError, available_tools, parse_arguments, run_tool
from changescope.errors import ChangescopeError

TOOL_MODES = ("auto", "native", "react")
#: earlier turns sent with each request (a turn = the user's message, the calls, the reply)
MAX_HISTORY_TURNS = 10


class Agent:
    """Answers a user about the session's images by calling the change models as typed tools.

    ``ask(message)`` returns ``{"reply": str, "tool_calls": [{"name", "arguments", "result" | "error"}]}``.
    """

    def __init__(self, session: Session, client: ChatClient, max_steps: int = 6, tool_mode: str = "auto"):
        if tool_mode not in TOOL_MODES:
            raise ChangescopeError(f"tool_mode must be one of {', '.join(TOOL_MODES)}, got '{tool_mode}'")
        if max_steps < 1:
            raise ChangescopeError(f"max_steps must be >= 1, got {max_steps}")
        self.session = session
        self.client = client
        self.max_steps = max_steps
        self.tool_mode = tool_mode
        self._turns: list[list[dict[str, Any]]] = []

    def set_images(self, before: str | Path, after: str | Path) -> None:
        self.session.set_images(before, after)

    def set_scene(self, before: str | Path, after: str | Path) -> None:
        self.session.set_scene(before, after)

    def ask(self, message: str) -> dict[str, Any]:
        if not isinstance(message, str) or not message.strip():
            raise ChangescopeError("the message is empty")
        tools = available_tools(self.session)
        if self.tool_mode != "react":
            try:
                return self._ask_native(message.strip(), tools)
            except ToolsRejected:
                if self.tool_mode == "native":
                    raise
                self.tool_mode = "react"  # the server has no tool calling: describe tools in the prompt
        return self._ask_react(message.strip(), tools)

    # -- native tool calling --------------------------------------------------------------------------

    def _ask_native(self, message: str, tools: list[Tool]) -> dict[str, Any]:
        turn: list[dict[str, Any]] = [{"role": "user", "content": message}]
        records: list[dict[str, Any]] = []
        schemas = [t.schema() for t in tools]
        for _ in range(self.max_steps):
            system = {"role": "system", "content": self._system_prompt(tools)}
            reply = self.client.complete([system, *self._history(), *turn], tools=schemas or None)
            if self.tool_mode == "auto" and schemas:
                self.tool_mode = "native"  # the server took our tools once: no fallback from here on
            calls = reply.get("tool_calls") or []
            if not isinstance(calls, list):
                calls = [calls]
            content = reply.get("content")
            if not calls:
                text = content if isinstance(content, str) else ""
                turn.append({"role": "assistant", "content": text})
                return self._finish(turn, text.strip() or "(the model gave an empty reply)", records)
            calls = [self._with_id(call, len(records) + i) for i, call in enumerate(calls)]
            turn.append({"role": "assistant", "content": content, "tool_calls": calls})
            for call in calls:
                record = self._call(call, tools)
                records.append(record)
                content = {"error": record["error"]} if "error" in record else record["result"]
                turn.append(
                    {"role": "tool", "tool_call_id": call["id"], "content": json.dumps(content, default=str)}
                )
        return self._finish(turn, self._step_limit_reply(), records)

    @staticmethod
    def _with_id(call: Any, index: int) -> dict[str, Any]:
        # a call without an id cannot be answered; give it one so the tool message can refer to it
        call = dict(call) if isinstance(call, dict) else {"function": call}
        call.setdefault("type", "function")
        if not isinstance(call.get("id"), str) or not call["id"]:
            call["id"] = f"call_{index}"
        return call

    def _call(self, call: dict[str, Any], tools: list[Tool]) -> dict[str, Any]:
        function = call.get("function")
        if not isinstance(function, dict):
            return {"name": None, "arguments": None, "error": "malformed tool call: no 'function' object"}
        name, raw = function.get("name"), function.get("arguments")
        return self._run(name, raw, tools)

    def _run(self, name: Any, raw: Any, tools: list[Tool]) -> dict[str, Any]:
        try:
            arguments = parse_arguments(raw)
        except ToolError:
            arguments = raw  # recorded as sent; run_tool reports the JSON error
        record: dict[str, Any] = {"name": name, "arguments": arguments}
        try:
            record["result"] = run_tool(self.session, tools, name, raw)
        except ChangescopeError as err:
            record["error"] = str(err)
        return record

    # -- text ReAct -----------------------------------------------------------------------------------

    def _ask_react(self, message: str, tools: list[Tool]) -> dict[str, Any]:
        turn: list[dict[str, Any]] = [{"role": "user", "content": message}]
        records: list[dict[str, Any]] = []
        for _ in range(self.max_steps):
            system = {"role": "system", "content": self._system_prompt(tools) + "\n\n" + react_prompt(tools)}
            reply = self.client.complete(
                [system, *self._history(text_only=True), *turn], stop=["Observation:"]
            )
            text = reply.get("content") if isinstance(reply.get("content"), str) else ""
            turn.append({"role": "assistant", "content": text})
            try:
                step = parse_react(text)
            except ToolError as err:
                observation = {"error": f"{err}. {REACT_REMINDER}"}
            else:
                if step[0] == "final":
                    return self._finish(turn, step[1], records)
                record = self._run(step[1], step[2], tools)
                records.append(record)
                observation = {"error": record["error"]} if "error" in record else record["result"]
            turn.append({"role": "user", "content": "Observation: " + json.dumps(observation, default=str)})
        return self._finish(turn, self._step_limit_reply(), records)

    # -- shared ---------------------------------------------------------------------------------------

    def _step_limit_reply(self) -> str:
        return (
            f"I stopped after {self.max_steps} steps without a final answer (the step limit); "
            "the tool results so far are listed with this reply."
        )

    def _finish(
        self, turn: list[dict[str, Any]], reply: str, records: list[dict[str, Any]]
    ) -> dict[str, Any]:
        if turn[-1].get("role") != "assistant" or turn[-1].get("tool_calls"):
            turn.append({"role": "assistant", "content": reply})
        self._turns = [*self._turns, turn][-MAX_HISTORY_TURNS:]
        return {"reply": reply, "tool_calls": records}

    def _history(self, text_only: bool = False) -> list[dict[str, Any]]:
        messages = [m for turn in self._turns for m in turn]
        if text_only:  # a ReAct prompt has no tool messages; keep what was said
            messages = [
                {"role": m["role"], "content": m["content"]}
                for m in messages
                if m["role"] in ("user", "assistant") and isinstance(m.get("content"), str) and m["content"]
            ]
        return messages

    def _system_prompt(self, tools: list[Tool]) -> str:
        session = self.session
        if session.before is not None:
            images = (
                f"The user has loaded two images of one place: before = {session.before.name}, "
                f"after = {session.after.name}."
            )
        else:
            images = "No images are loaded yet: ask the user for a before and an after image."
        if session.scene is not None:
            images += f" A scene pair is also loaded: {session.scene[0].name}, {session.scene[1].name}."
        resolution = (
            f"One pixel is {session.gsd_m} m on the ground."
            if session.gsd_m is not None
            else "The ground resolution is unknown: give areas in pixels or percent."
        )
        return (
            "You are changescope's assistant for remote-sensing change analysis. "
            f"{images} You cannot see the images: answer by calling the tools, which already know which "
            "images to use (never pass file paths). State only numbers that the tools returned; when a tool "
            f"returns an error, correct the call or explain the problem. {resolution} "
            f"The change classes are: {', '.join(session.classes[1:])}. Answer briefly."
        )


# -- ReAct text protocol ------------------------------------------------------------------------------

REACT_REMINDER = (
    "Reply either with 'Action: <tool name>' and 'Action Input: <JSON object>' on two lines, "
    "or with 'Final Answer: <your answer>'"
)


def react_prompt(tools: list[Tool]) -> str:
    lines = ["You have these tools:"]
    for tool in tools:
        lines.append(f"- {tool.name}: {tool.description} Arguments: {_arguments_text(tool)}")
    lines += [
        "",
        "To use a tool, reply with exactly:",
        "Thought: <why>",
        "Action: <one tool name>",
        "Action Input: <a JSON object with the arguments, {} when there are none>",
        "Then wait: the result comes back as 'Observation: <JSON>'.",
        "When you can answer, reply with:",
        "Thought: <why>",
        "Final Answer: <your answer to the user>",
    ]
    return "\n".join(lines)


def _arguments_text(tool: Tool) -> str:
    parts = []
    for name, spec in tool.parameters["properties"].items():
        if "enum" in spec:
            kind = "one of " + "|".join(spec["enum"])
        elif spec.get("type") == "integer":
            kind = f"a whole number {spec.get('minimum', '')}..{spec.get('maximum', '')}"
        else:
            kind = "text"
        optional = "" if name in tool.parameters.get("required", ()) else " (optional)"
        parts.append(f'"{name}": {kind}{optional}')
    return "{" + ", ".join(parts) + "}"


def parse_react(text: str) -> tuple[str, str] | tuple[str, str, dict[str, Any] | str]:
    """``("final", answer)`` or ``("action", name, arguments)``; a ToolError if it is neither.

    Strict: the first ``Action:`` line names the tool and must be followed by an ``Action Input:`` that
    starts with a JSON object (text after the object, e.g. an invented Observation, is ignored). A
    ``Final Answer:`` counts only if no ``Action:`` comes before it. Arguments that are not a JSON object
    are passed on as text, so the tool check reports them like a native call's broken JSON.
    """
    lines = text.splitlines()
    action = final = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if action is None and final is None and stripped.startswith("Final Answer:"):
            final = "\n".join([stripped[len("Final Answer:") :], *lines[i + 1 :]]).strip()
        elif action is None and final is None and stripped.startswith("Action:"):
            action = i
    if final is not None:
        if not final:
            raise ToolError("'Final Answer:' is empty")
        return ("final", final)
    if action is None:
        raise ToolError("found neither 'Action:' nor 'Final Answer:'")
    name = lines[action].strip()[len("Action:") :].strip()
    if not name:
        raise ToolError("'Action:' names no tool")
    rest = "\n".join(lines[action + 1 :]).lstrip()
    if not rest.startswith("Action Input:"):
        raise ToolError("'Action:' must be followed by a line 'Action Input: <JSON object>'")
    raw = rest[len("Action Input:") :].strip()
    try:
        value, _ = json.JSONDecoder().raw_decode(raw)
    except json.JSONDecodeError:
        return ("action", name, raw)  # run_tool says "arguments are not valid JSON"
    if not isinstance(value, dict):
        raise ToolError(f"'Action Input:' must be a JSON object, got {raw[:100]}")
    return ("action", name, value)
