"""Chat clients: anything with ``complete(messages, tools=None, stop=None) -> assistant message``.

The message format is OpenAI chat-completions' (``{"role": "assistant", "content": ..., "tool_calls":
[{"id", "type": "function", "function": {"name", "arguments"}}]}``), so the agent loop has one code path
for an HTTP server (``OpenAIChat``) and for the local model (``local.LocalChat``).
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from changescope.errors import ChangescopeError


class ChatClient(Protocol):
    def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, stop=None
    ) -> dict[str, Any]: ...


class LLMError(ChangescopeError):
    """The LLM server could not be reached or gave no usable answer."""


class ToolsRejected(LLMError):
    """The server refused a request because it carried ``tools`` (no tool-calling support)."""


#: 4xx statuses that mean "not this request" rather than "not you" (auth, URL, rate limit): a server
#: without a tool parser answers 400 (vLLM without --enable-auto-tool-choice) or 422 (schema validation)
_REJECTS_TOOLS = {400, 405, 415, 422, 501}


class OpenAIChat:
    """A client for an OpenAI-compatible ``/chat/completions`` endpoint (llama.cpp ``llama-server``,
    vLLM, Ollama's ``/v1``, ...). ``base_url`` is as for the ``openai`` package, e.g.
    ``http://127.0.0.1:8080/v1``; nothing but that URL is contacted. ``api_key`` defaults to
    ``$OPENAI_API_KEY`` (local servers need none). With ``model`` None the first id of ``GET /models`` is
    used (llama-server serves one model under some name; vLLM insists on the right one).
    """

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, timeout=120.0):
        import httpx

        self.base_url = base_url.rstrip("/")
        api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # trust_env=False: no proxy from the environment, only the URL we were given
        self._http = httpx.Client(timeout=timeout, headers=headers, trust_env=False)
        self.model = model

    def _model_name(self) -> str:
        if self.model is None:
            try:
                data = self._get("/models").get("data") or []
                self.model = str(data[0]["id"]) if data else "default"
            except (LLMError, KeyError, TypeError):
                self.model = "default"
        return self.model

    def _get(self, path: str) -> dict[str, Any]:
        import httpx

        try:
            response = self._http.get(self.base_url + path)
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as err:
            raise LLMError(f"LLM server {self.base_url}{path}: {err}") from err

    def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, stop=None
    ) -> dict[str, Any]:
        import httpx

        body: dict[str, Any] = {"model": self._model_name(), "messages": messages, "temperature": 0}
        if tools:
            body["tools"] = tools
            body["tool_choice"] = "auto"
        if stop:
            body["stop"] = stop
        url = f"{self.base_url}/chat/completions"
        try:
            response = self._http.post(url, json=body)
        except httpx.HTTPError as err:
            raise LLMError(f"cannot reach the LLM server at {url}: {err}") from err
        if response.status_code >= 400:
            detail = response.text.strip().replace("\n", " ")[:300]
            error = ToolsRejected if tools and response.status_code in _REJECTS_TOOLS else LLMError
            raise error(f"LLM server {url} answered {response.status_code}: {detail}")
        try:
            message = response.json()["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise LLMError(f"LLM server {url} sent no chat completion: {response.text[:300]}") from err
        if not isinstance(message, dict):
            raise LLMError(f"LLM server {url} sent a message that is not an object: {message!r:.300}")
        return message

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"OpenAIChat({self.base_url!r}, model={self.model!r})"
