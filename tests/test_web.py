"""The web app at /ui in headless Chromium (the system's, through the playwright package): upload a pair,
describe it, chat about it; and every request the page makes stays on 127.0.0.1.

Never ``playwright install`` (it downloads a browser); the machine's /usr/bin/chromium is used.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from test_serve import EchoAgent, files, live_server, pair

from changescope.serve.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install -y chromium)"
)
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]  # fmt: skip
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("web")


@pytest.fixture(scope="module")
def server(workdir):
    app = create_app(workdir=workdir, agent_factory=EchoAgent, web=True)
    with live_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def context():
    """A browser context that records the URL of every request and web socket any of its pages opens, and
    every response that is an HTTP error."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        context = browser.new_context()
        context.requested = []
        context.failed = []
        context.on("request", lambda request: context.requested.append(request.url))
        context.on("response", lambda r: r.status >= 400 and context.failed.append(f"{r.status} {r.url}"))
        context.on("page", lambda page: page.on("websocket", lambda ws: context.requested.append(ws.url)))
        context.set_default_timeout(TIMEOUT_MS)
        yield context
        browser.close()


def assert_all_local(context) -> None:
    network = [u for u in context.requested if urlparse(u).scheme in ("http", "https", "ws", "wss")]
    assert network, "no requests were recorded"
    elsewhere = [u for u in network if urlparse(u).hostname != "127.0.0.1"]
    assert not elsewhere, f"requests left the machine: {elsewhere[:5]}"
    assert not context.failed, context.failed


def test_describe_and_chat_in_the_browser(server, workdir, context, synth, tmp_path):
    from playwright.sync_api import expect

    page = context.new_page()
    page.on("websocket", lambda ws: context.requested.append(ws.url))
    page.goto(f"{server}/ui/")
    a, b = pair(synth, 1)
    page.locator("#before input[type=file]").set_input_files(a)
    page.locator("#after input[type=file]").set_input_files(b)
    expect(page.locator("#before img")).to_be_visible()
    expect(page.locator("#after img")).to_be_visible()
    page.locator("#describe").click()
    caption = page.locator("#caption textarea")
    expect(caption).not_to_have_value("")
    expect(page.locator("#overlay img")).to_be_visible()
    api = httpx.post(f"{server}/describe", files=files(a, b), timeout=60).json()["caption"]
    assert caption.input_value() == api

    page.get_by_role("tab", name="Chat").click()
    page.locator("#message textarea").fill("what changed?")
    page.locator("#message textarea").press("Enter")
    reply = page.locator("#chatbot").get_by_text("echo: what changed?")
    expect(reply).to_be_visible()
    expect(page.locator("#chatbot").get_by_text("tools called: describe")).to_be_visible()

    # a SynthChange example fills both inputs (their previews load) and describes like the API
    page.get_by_role("tab", name="Describe & detect").click()
    page.get_by_test_id("dataset-cell-2-0").click()
    for side in ("before", "after"):
        expect(page.locator(f"#{side} img")).to_have_attribute("src", re.compile("test_000002"))
        page.wait_for_function(f"document.querySelector('#{side} img').naturalWidth > 0")
    page.locator("#describe").click()
    example = workdir / "examples/images/test"
    api = httpx.post(
        f"{server}/describe", files=files(example / "A/test_000002.png", example / "B/test_000002.png")
    ).json()["caption"]
    expect(caption).to_have_value(api)

    shot = tmp_path / "ui.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page.close()
    assert_all_local(context)


def test_api_docs_render_offline(server, context):
    from playwright.sync_api import expect

    page = context.new_page()
    page.goto(f"{server}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("changescope")
    expect(page.get_by_text("/describe", exact=True)).to_be_visible()
    page.close()
    assert_all_local(context)


def test_a_change_llm_answers_the_chat_and_cites_its_mask(change_llm, context, synth, tmp_path):
    """Served with a ChangeLLM as the model, /chat (REST and the web app's chat tab) is answered by the
    LLM itself, seeing the session's images; its vision model serves /describe. A change / no-change
    question always gets the change mask's reading, so the citation is checked whatever the tiny random
    LM says, against the library's own ChangeLLMChat on the same pair."""
    from playwright.sync_api import expect

    from changescope.models.llm_hub import load_change_llm
    from changescope.tasks.llm_inference import ChangeLLMChat

    a, b = pair(synth, 1)
    question = "Did anything change?"
    library = ChangeLLMChat(*load_change_llm(change_llm))
    library.set_images(a, b)
    expected = library.ask(question)
    assert expected["citation"]["kind"] == "changed" and "[change mask: " in expected["reply"]

    app = create_app(change_llm, workdir=tmp_path / "work", web=True)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as api:
        assert api.get("/health").json()["model"] == str(change_llm / "vision")
        assert api.post("/describe", files=files(a, b)).json()["caption"]
        session = api.post("/chat/sessions").json()["session"]
        assert api.post(f"/chat/{session}/images", files=files(a, b)).status_code == 200
        said = api.post("/chat", json={"session": session, "message": question}).json()
        assert said["reply"] == expected["reply"] and said["citation"] == expected["citation"]
        assert [c["name"] for c in said["tool_calls"]] == ["change_mask"]

        page = context.new_page()
        page.goto(f"{url}/ui/")
        page.locator("#before input[type=file]").set_input_files(a)
        page.locator("#after input[type=file]").set_input_files(b)
        expect(page.locator("#after img")).to_be_visible()
        page.get_by_role("tab", name="Chat").click()
        expect(page.get_by_text("ChangeLLM (uses the images above)")).to_be_visible()
        page.locator("#message textarea").fill(question)
        page.locator("#message textarea").press("Enter")
        expect(page.locator("#chatbot").get_by_text("tools called: change_mask")).to_be_visible()
        shown = page.locator("#chatbot").inner_text()
        assert f"[change mask: {expected['citation']['objects']} " in shown
        page.close()
