"""The web app at ``/ui``: two images (or a SynthChange example) -> caption, change overlay, counts; a
question with its grounding; a chat with the agent; with a search index, a search box over the archive.
It calls the same ``Predictor`` as the REST API, so both give the same answers, and it loads nothing from
outside the server (system fonts, no analytics).
"""

from __future__ import annotations

import os

# gradio reads these at import time; without them it reports usage and asks the Hugging Face Hub for things
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402

from changescope.errors import ChangescopeError  # noqa: E402
from changescope.postprocess import MIN_AREA  # noqa: E402
from changescope.serve.service import Archive, ChatSessions, Predictor, ServiceError  # noqa: E402

# the default theme's IBM Plex fonts are served locally, but system fonts need no request at all
THEME = gr.themes.Base(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def example_pairs(folder: Path, pairs: int = 4) -> list[list[str]]:
    """A few SynthChange test pairs the shipped model never saw (the demo's seed), generated once."""
    from changescope.data.synth import generate
    from changescope.demo import DEMO_SEED

    if not (folder / "synthchange.json").is_file():
        generate(folder, pairs=pairs, size=256, seed=DEMO_SEED, split_fractions=(0.0, 0.0, 1.0))
    before = sorted((folder / "images" / "test" / "A").glob("*.png"))
    return [[str(a), str(a.parent.parent / "B" / a.name)] for a in before]


def _pair(before: str | None, after: str | None) -> tuple[Path, Path]:
    if not before or not after:
        raise gr.Error("Give both images first (or pick an example).")
    return Path(before), Path(after)


#: side of the search hits' thumbnails, in pixels
THUMBNAIL = 192


def _tile_image(path: Path, window: list[int]):
    """A scene tile's window of ``path`` as an 8-bit RGB image (16-bit / float data stretched to its own
    2nd-98th percentile: a preview, not the index's reading)."""
    import numpy as np
    from PIL import Image
    from rasterio.windows import Window

    from changescope.geo.raster import open_scene

    with open_scene(path) as scene:
        values, valid = scene.read(Window(*window))
        if scene.dtype != np.uint8 and valid.any():
            low, high = np.percentile(values[:, valid], (2, 98), axis=1)
            span = np.where(high > low, high - low, 1.0)
            values = (values - low[:, None, None]) / span[:, None, None] * 255
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8).transpose(1, 2, 0))


def thumbnail(hit: dict[str, Any], side: int = THUMBNAIL):
    """The hit's after image (a scene tile: its window) as a small PIL image, or None when the file is
    not here or cannot be read."""
    from PIL import Image

    after = Path(str(hit.get("after") or ""))
    if not after.is_file():
        return None
    try:
        if hit.get("window"):
            image = _tile_image(after, hit["window"])
        else:
            with Image.open(after) as img:
                image = img.convert("RGB")
        image.thumbnail((side, side))
        return image
    except Exception:  # noqa: BLE001 - a preview that cannot be drawn is left out, the hit stays listed
        return None


def _tool_name(call: Any) -> str:
    return str(call.get("name") or call.get("tool") or call) if isinstance(call, dict) else str(call)


def build(
    predictor: Predictor, chats: ChatSessions, examples: list[list[str]], archive: Archive | None = None
) -> gr.Blocks:
    def describe(before, after):
        a, b = _pair(before, after)
        names = (a.name, b.name)
        try:
            if "mask" not in predictor.model.tasks:
                return predictor.describe(a, b, names)["caption"], None, []
            result, picture = predictor.detect(a, b, MIN_AREA, names)
        except ChangescopeError as err:
            raise gr.Error(str(err)) from None
        rows = [[n, c["objects"], c["pixels"], c["percent"]] for n, c in result["classes"].items()]
        return result["caption"] or "", picture, rows

    def ask(before, after, question):
        a, b = _pair(before, after)
        try:
            result, picture = predictor.ask(a, b, question or "", MIN_AREA, (a.name, b.name))
        except ChangescopeError as err:
            raise gr.Error(str(err)) from None
        if "answer" not in result:  # a grounding-only model says where, not what
            return "(this model only grounds questions: see the image)", picture
        return f"{result['answer']}  (confidence {result['confidence']:.2f})", picture

    def chat(message, history, session_id, sent, before, after):
        if not message.strip():
            return history, message, session_id, sent
        try:
            try:
                session = chats.open(session_id)
            except ServiceError as err:
                if err.status != 404:
                    raise
                session = chats.open(None)  # the session was dropped from memory: start a new one
            if before and after and (session.id, before, after) != sent:
                folder = chats.image_dir(session)
                copies = [
                    shutil.copy(p, folder / f"{n}{Path(p).suffix}")
                    for n, p in (("before", before), ("after", after))
                ]
                chats.set_images(session, Path(copies[0]), Path(copies[1]))
                sent = (session.id, before, after)
            reply = chats.ask(session, message)
        except ChangescopeError as err:
            raise gr.Error(str(err)) from None
        tools = ", ".join(_tool_name(c) for c in reply["tool_calls"])
        text = reply["reply"] + (f"\n\n*tools called: {tools}*" if tools else "")
        turn = [{"role": "user", "content": message}, {"role": "assistant", "content": text}]
        return history + turn, "", session.id, sent

    def search(query, k):
        if not (query or "").strip():
            raise gr.Error("Type what to look for first.")
        try:
            hits = archive.search(query, int(k))
        except ChangescopeError as err:
            raise gr.Error(str(err)) from None
        pictures = []
        for hit in hits:
            picture = thumbnail(hit)
            if picture is not None:
                pictures.append((picture, f"{hit['rank']}. {hit['id']} ({hit['score']:.3f})"))
        rows = [[h["rank"], round(h["score"], 4), h["id"], h["before"], h["after"]] for h in hits]
        return pictures, rows

    with gr.Blocks(title="changescope", analytics_enabled=False) as ui:
        gr.Markdown("## changescope: what changed between two images of one place?")
        with gr.Row():
            before = gr.Image(type="filepath", label="before", sources=["upload"], elem_id="before")
            after = gr.Image(type="filepath", label="after", sources=["upload"], elem_id="after")
        if examples:
            gr.Examples(examples, inputs=[before, after], label="SynthChange examples")
        with gr.Tab("Describe & detect"):
            run = gr.Button("Describe & detect", variant="primary", elem_id="describe")
            caption = gr.Textbox(label="caption", interactive=False, elem_id="caption")
            with gr.Row():
                overlay = gr.Image(label="changes", format="png", interactive=False, elem_id="overlay")
                table = gr.Dataframe(headers=["class", "objects", "pixels", "% of image"], interactive=False)
        with gr.Tab("Ask"):
            question = gr.Textbox(label="question", placeholder="How many buildings were built?")
            ask_button = gr.Button("Ask")
            answer = gr.Textbox(label="answer", interactive=False)
            grounding = gr.Image(label="where the answer points", format="png", interactive=False)
        with gr.Tab("Chat"):
            chatbot = gr.Chatbot(label=f"{chats.label} (uses the images above)", elem_id="chatbot")
            message = gr.Textbox(
                label="message", placeholder="What changed, and how many new buildings?", elem_id="message"
            )
            session_id, sent = gr.State(None), gr.State(None)
        if archive is not None:
            with gr.Tab("Search"):
                query = gr.Textbox(
                    label=f"search the archive ({len(archive.index)} pairs in {archive.name})",
                    placeholder="a new road through the fields",
                    elem_id="search-query",
                )
                k = gr.Slider(1, 50, value=8, step=1, label="hits")
                search_button = gr.Button("Search", elem_id="search")
                gallery = gr.Gallery(label="after images of the hits", columns=4, elem_id="search-gallery")
                hits_table = gr.Dataframe(
                    headers=["rank", "score", "id", "before", "after"], interactive=False, elem_id="hits"
                )
            search_button.click(search, [query, k], [gallery, hits_table], api_name="search")
            query.submit(search, [query, k], [gallery, hits_table], api_visibility="private")

        run.click(describe, [before, after], [caption, overlay, table], api_name="describe")
        ask_button.click(ask, [before, after, question], [answer, grounding], api_name="ask")
        question.submit(ask, [before, after, question], [answer, grounding], api_visibility="private")
        chat_io = [message, chatbot, session_id, sent, before, after], [chatbot, message, session_id, sent]
        message.submit(chat, *chat_io, api_name="chat")
    return ui


def mount(
    app,
    predictor: Predictor,
    chats: ChatSessions,
    examples_dir: Path,
    max_upload_bytes: int,
    archive: Archive | None = None,
) -> None:
    """Mount the web app on ``app`` at ``/ui`` (a search tab when ``archive`` is given)."""
    examples = example_pairs(examples_dir)
    gr.mount_gradio_app(
        app,
        build(predictor, chats, examples, archive),
        path="/ui",
        # gradio 6 works out file URLs of example clicks (/run/predict) without the mount prefix otherwise
        root_path="/ui",
        theme=THEME,
        footer_links=["api", "settings"],
        allowed_paths=[str(examples_dir)],
        max_file_size=max_upload_bytes,
        ssr_mode=False,
        mcp_server=False,
        pwa=False,
        enable_monitoring=False,
    )
