"""``changescope serve``: a REST API (FastAPI) with a web app (Gradio) at ``/ui``, both offline.

``create_app`` (in ``changescope.serve.app``) builds the app; ``serve`` runs it with uvicorn.
"""

from __future__ import annotations

from pathlib import Path


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    model: str | Path = "default",
    max_upload_mb: float = 20,
    llm_url: str | None = None,
    llm_model: str | None = None,
    precision: str | None = None,
    index: str | Path | None = None,
    tta: int | None = None,
) -> None:
    """Load ``model`` once and serve the API on ``host:port`` until interrupted (docs at ``/docs``, web
    app at ``/ui``). ``llm_url`` / ``llm_model`` are handed to the chat agent; ``index`` (a search index
    of this model) is served at ``/search``, in the web app and to the agent."""
    import uvicorn

    from changescope.errors import ChangescopeError
    from changescope.serve.app import create_app

    if max_upload_mb <= 0:
        raise ChangescopeError("--max-upload-mb must be > 0")
    app = create_app(
        model,
        max_upload_bytes=int(max_upload_mb * 2**20),
        precision=precision,
        tta=tta,
        index=index,
        agent_options={"model": str(model), "llm_url": llm_url, "llm_model": llm_model},
    )
    uvicorn.run(app, host=host, port=port, log_level="info")
