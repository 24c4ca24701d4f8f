"""``changescope chat [BEFORE AFTER]``: talk to the agent in a terminal.

Lines starting with ``/`` are commands (``/help``); anything else goes to the agent. Tool calls are shown
as they were made (name, arguments, result or error), then the reply. Files the tools write (overlays,
masks, JSON) go into a new session directory, printed at the start.
"""

from __future__ import annotations

import json
import shlex
import tempfile
from pathlib import Path
from typing import Any

from changescope.errors import ChangescopeError

HELP = """\
/images BEFORE AFTER   set the image pair (PNG, JPEG, TIFF; one size)
/scene BEFORE AFTER    set a scene pair (GeoTIFFs of any size) for the scene report
/gsd METRES            ground size of one pixel, for areas in m2
/help                  this text
/quit                  leave (or Ctrl-D)
Anything else is a message to the agent, e.g. "how many buildings were built?"."""


def chat(
    before: str | Path | None = None,
    after: str | Path | None = None,
    model: str = "default",
    llm_url: str | None = None,
    llm_model: str | None = None,
    gguf: str | Path | None = None,
    max_steps: int = 6,
    *,
    session_dir: str | Path | None = None,
    index: str | Path | None = None,
) -> None:
    """Run the terminal chat until /quit, Ctrl-D or Ctrl-C; the tools' files (masks, overlays, reports) go
    to ``session_dir``, which is kept; without it they go to a temporary folder removed at the end.
    ``index`` (a search index of ``model``) gives the agent its ``search_archive`` tool."""
    import shutil

    from changescope.agent import build_agent

    if (before is None) != (after is None):
        raise ChangescopeError("give both BEFORE and AFTER, or neither")
    temporary = session_dir is None
    if temporary:
        session_dir = Path(tempfile.mkdtemp(prefix="changescope-chat-"))
    else:
        Path(session_dir).mkdir(parents=True, exist_ok=True)
    try:
        agent = build_agent(session_dir, model, llm_url, llm_model, gguf, max_steps, index=index)
        if before is not None:
            agent.set_images(before, after)
        out = _Output()
        out.note(f"changescope chat: model {model}, LLM {agent.client!r}")
        kept = "removed when the chat ends (--out DIR keeps them)" if temporary else "kept"
        out.note(f"files go to {session_dir}, {kept}; /help lists the commands")
        if hasattr(agent.client, "load"):  # the local LLM: load before the first prompt, not inside it
            out.note("loading the local chat model (about 30 s) ...")
            agent.client.load()
        _loop(agent, out)
    finally:
        if temporary:
            shutil.rmtree(session_dir, ignore_errors=True)


def _loop(agent, out: _Output) -> None:
    while True:
        try:
            line = out.prompt().strip()
        except (EOFError, KeyboardInterrupt):
            out.note("")
            return
        if not line:
            continue
        try:
            if line.startswith("/"):
                if _command(agent, line, out):
                    return
                continue
            answer = agent.ask(line)
        except ChangescopeError as err:
            out.error(str(err))
            continue
        for call in answer["tool_calls"]:
            out.tool(call)
        out.reply(answer["reply"])


def _command(agent, line: str, out: _Output) -> bool:
    """Run a /command; True means quit."""
    try:
        words = shlex.split(line)
    except ValueError as err:
        raise ChangescopeError(f"cannot read the command: {err}") from err
    name, args = words[0], words[1:]
    if name in ("/quit", "/exit", "/q"):
        return True
    if name == "/help":
        out.note(HELP)
    elif name in ("/images", "/scene") and len(args) == 2:
        (agent.set_images if name == "/images" else agent.set_scene)(*args)
        out.note(f"{name[1:]} set: {Path(args[0]).name}, {Path(args[1]).name}")
    elif name == "/gsd" and len(args) == 1:
        try:
            value = float(args[0])
        except ValueError as err:
            raise ChangescopeError(f"/gsd takes a number of metres, got '{args[0]}'") from err
        if not value > 0:
            raise ChangescopeError("/gsd must be a positive number of metres")
        agent.session.gsd_m = value
        out.note(f"one pixel = {value} m")
    else:
        raise ChangescopeError(f"unknown command or wrong arguments: {line} (try /help)")
    return False


class _Output:
    """rich when it is installed (colours, markup-safe), plain print / input otherwise."""

    def __init__(self):
        try:
            from rich.console import Console

            self.console: Any = Console(highlight=False)
        except ImportError:
            self.console = None

    def prompt(self) -> str:
        if self.console is not None:
            return self.console.input("[bold green]you>[/] ")
        return input("you> ")

    def _print(self, text: str, style: str | None = None) -> None:
        if self.console is not None:
            # soft_wrap: long JSON results are left to the terminal to wrap, not broken by rich
            self.console.print(text, style=style, markup=False, soft_wrap=True)
        else:
            print(text)

    def note(self, text: str) -> None:
        self._print(text, "dim")

    def error(self, text: str) -> None:
        self._print(f"error: {text}", "bold red")

    def tool(self, call: dict[str, Any]) -> None:
        arguments = (
            json.dumps(call["arguments"]) if not isinstance(call["arguments"], str) else call["arguments"]
        )
        if "error" in call:
            self._print(f"  [{call['name']}] {arguments} -> error: {call['error']}", "yellow")
        else:
            result = json.dumps(call["result"], default=str)
            self._print(f"  [{call['name']}] {arguments} -> {result[:400]}", "cyan")

    def reply(self, text: str) -> None:
        self._print(f"agent> {text}", "bold")
