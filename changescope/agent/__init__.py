"""An agent that answers a user about two images by calling the change models as typed tools.

``build_agent(session_dir)`` -> ``Agent``; ``agent.set_images(before, after)``; ``agent.ask(message)`` ->
``{"reply", "tool_calls"}``. The LLM is an OpenAI-compatible server (``llm_url``), a local GGUF (``gguf``),
or by default the packaged SmolLM2-135M-Instruct with constrained tool choice (``local.py`` says what it
can and cannot do). No generated code is ever run: see ``tools.py`` and ``loop.py``.
"""

from __future__ import annotations

from pathlib import Path

from changescope.agent.loop import Agent
from changescope.agent.tools import Session

__all__ = ["Agent", "Session", "build_agent"]


def build_agent(
    session_dir: str | Path,
    model: str | Path = "default",
    llm_url: str | None = None,
    llm_model: str | None = None,
    gguf: str | Path | None = None,
    max_steps: int = 6,
    *,
    tool_mode: str = "auto",
    gsd_m: float | None = None,
    api_key: str | None = None,
    index: str | Path | None = None,
) -> Agent:
    """An agent over the change model ``model`` whose files go into ``session_dir``.

    ``llm_url`` (an OpenAI-compatible base URL such as ``http://127.0.0.1:8080/v1``) wins over ``gguf``
    (a local GGUF chat model); with neither, the packaged SmolLM2-135M-Instruct is used. Nothing is loaded
    here: the change model and a local LLM load on the first ``ask`` (once per process). ``index`` (a
    search index of ``model``, ``changescope index``) gives the agent the ``search_archive`` tool.
    """
    session = Session(session_dir, model=model, gsd_m=gsd_m, index=index)
    if llm_url is not None:
        from changescope.agent.llm import OpenAIChat

        return Agent(session, OpenAIChat(llm_url, llm_model, api_key=api_key), max_steps, tool_mode)
    from changescope.agent.local import LocalChat

    # the local backend always answers in the native format (it builds the calls itself)
    return Agent(session, LocalChat(gguf), max_steps, tool_mode="native")
