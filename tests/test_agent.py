"""The agent: typed tools over the shipped model, driven over real HTTP by a scripted LLM server.

``ScriptedLLM`` is a test double for an LLM server (the one thing not run for real here: no LLM that
reliably calls tools fits in the test budget). It speaks the OpenAI chat-completions wire format on
127.0.0.1 and answers with pre-scripted messages, so each test fixes what "the model" does and checks what
the agent did with it and sent back. The tools, the change model and the HTTP client all run for real. The
local SmolLM2 backend runs for real once (slow).
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from changescope.agent import build_agent
from changescope.agent.llm import LLMError, OpenAIChat
from changescope.agent.local import LocalChat, _numbers_supported, default_gguf, templated_reply
from changescope.agent.loop import parse_react
from changescope.agent.tools import Session, ToolError, available_tools
from changescope.errors import ChangescopeError, DataError

CLASSES = ["background", "road", "building", "tree", "water"]


# -- the scripted LLM server ----------------------------------------------------------------------------


class ScriptedLLM:
    """A test double for an LLM server: OpenAI chat-completions over HTTP on 127.0.0.1.

    Each ``POST /v1/chat/completions`` gets the next scripted assistant message (or, for a callable
    script, whatever it returns for the request body) wrapped in a real ``chat.completion`` object; every
    request body is recorded in ``requests``. ``reject_tools``: answer 400 to any request carrying
    ``tools``, as vLLM does without ``--enable-auto-tool-choice``.
    """

    def __init__(self, script: list[dict] | Callable[[dict], dict], reject_tools: bool = False):
        self.script = script
        self.reject_tools = reject_tools
        self.requests: list[dict[str, Any]] = []
        self._next = 0
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": "scripted-model", "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                double.requests.append(body)
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "not found"}})
                if double.reject_tools and "tools" in body:
                    return self._send(
                        400,
                        {"error": {"message": "tools are not supported", "type": "invalid_request_error"}},
                    )
                self._send(200, double.completion(body))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def completion(self, body: dict) -> dict:
        if callable(self.script):
            message = self.script(body)
        else:
            message = self.script[self._next]
            self._next += 1
        return {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if message.get("tool_calls") else "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def call(name: str, arguments: str, id: str = "call_1") -> dict:
    """An assistant message with one tool call, as an OpenAI server sends it (arguments a JSON string)."""
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}],
    }


def text(content: str) -> dict:
    return {"role": "assistant", "content": content}


@pytest.fixture
def llm_server():
    servers = []

    def start(script, reject_tools: bool = False) -> ScriptedLLM:
        servers.append(ScriptedLLM(script, reject_tools))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _detect(pair):
    from changescope.tasks.detection import detect_pair
    from changescope.tasks.inference import load

    model, processor, _ = load("default")
    assert list(model.config.classes) == CLASSES
    return detect_pair(model, processor, *pair).result


@pytest.fixture(scope="module")
def pair(synth):
    """The first test pair where the shipped model finds changed buildings (at 64 px, not every pair shows
    them; chosen by running the model, so a retrained default needs no edit here)."""
    for a in sorted((synth / "images/test/A").iterdir()):
        candidate = a, synth / "images/test/B" / a.name
        found = _detect(candidate)["classes"]
        if found["building"]["objects"] > 0:
            return candidate
    pytest.fail("the shipped model finds changed buildings in no test pair of the fixture")


@pytest.fixture(scope="module")
def direct(pair):
    """detect_pair run directly on the shipped model: what the tools must report."""
    return _detect(pair)


def tool_message(request: dict, index: int = -1) -> tuple[dict, dict]:
    """The tool message at ``index`` of a recorded request and its decoded content."""
    message = request["messages"][index]
    assert message["role"] == "tool"
    return message, json.loads(message["content"])


def check_schema(schema: Any) -> None:
    """A JSON Schema (the subset OpenAI tools use) that is well formed: known types, enums typed and
    unique, required names among the properties."""
    assert isinstance(schema, dict)
    assert schema["type"] in ("object", "string", "number", "integer", "boolean", "array")
    if schema["type"] == "object":
        assert isinstance(schema["properties"], dict)
        assert set(schema.get("required", [])) <= set(schema["properties"])
        assert isinstance(schema.get("additionalProperties", False), bool)
        for sub in schema["properties"].values():
            check_schema(sub)
    if "enum" in schema:
        assert schema["enum"] and len(set(schema["enum"])) == len(schema["enum"])
        assert all(isinstance(v, str) for v in schema["enum"])
    assert isinstance(schema.get("description", ""), str)


# -- native tool calling ------------------------------------------------------------------------------


def test_detect_call_feeds_back_the_real_detection_and_answers(tmp_path, llm_server, pair, direct):
    llm = llm_server([call("detect_changes", "{}"), text("Some buildings appeared."), text("Still so.")])
    agent = build_agent(tmp_path / "session", llm_url=llm.url)
    agent.set_images(*pair)
    answer = agent.ask("what changed?")

    assert answer["reply"] == "Some buildings appeared."
    [record] = answer["tool_calls"]
    assert record["name"] == "detect_changes" and record["arguments"] == {} and "error" not in record

    # the tools offered: valid schemas, class enums from the model; the shipped model answers and grounds;
    # no scene tool without a scene pair
    first = llm.requests[0]
    assert first["model"] == "scripted-model"  # from GET /models
    tools = {t["function"]["name"]: t["function"] for t in first["tools"]}
    assert set(tools) == {
        "describe_change",
        "detect_changes",
        "count_objects",
        "changed_area",
        "answer_question",
        "ground",
    }
    for tool in first["tools"]:
        assert tool["type"] == "function" and re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", tool["function"]["name"])
        check_schema(tool["function"]["parameters"])
    assert tools["count_objects"]["parameters"]["properties"]["cls"]["enum"] == CLASSES[1:]
    area = tools["changed_area"]["parameters"]["properties"]
    assert area["cls"]["enum"] == [*CLASSES[1:], "all"]
    assert area["units"]["enum"] == ["pixels", "percent", "m2"]
    assert first["messages"][0]["role"] == "system" and pair[1].name in first["messages"][0]["content"]

    # what went back to the model is detect_pair's result, as a tool message answering the call
    second = llm.requests[1]
    assert second["messages"][-2]["tool_calls"][0]["id"] == "call_1"
    message, fed = tool_message(second)
    assert message["tool_call_id"] == "call_1"
    assert fed == record["result"]
    assert fed["caption"] == direct["caption"]
    assert fed["changed_pixels"] == direct["changed_pixels"] and fed["objects"] == direct["objects"]
    for name in CLASSES[1:]:
        row = direct["classes"][name]
        assert fed["classes"][name] == {k: row[k] for k in ("pixels", "percent", "objects")}
    # the overlay, mask and result.json are in the session directory
    for path in fed["files"].values():
        assert (tmp_path / "session" / path).is_file()
    saved = json.loads((tmp_path / "session" / fed["files"]["result.json"]).read_text())
    assert saved["changed_pixels"] == direct["changed_pixels"]

    # the next question carries the conversation so far
    assert agent.ask("and now?")["reply"] == "Still so."
    history = llm.requests[2]["messages"]
    assert [m["role"] for m in history] == ["system", "user", "assistant", "tool", "assistant", "user"]


@pytest.mark.parametrize(
    "name, arguments, error",
    [
        ("explode", "{}", "unknown tool 'explode'; the tools are: describe_change, detect_changes"),
        ("count_objects", '{"cls": "building"', "arguments are not valid JSON"),
        (
            "count_objects",
            '{"cls": "house"}',
            "'cls' must be one of road, building, tree, water; got 'house'",
        ),
        ("count_objects", "{}", "missing required argument 'cls'"),
        ("changed_area", '{"cls": "all", "units": "pixels", "path": "/etc"}', "unknown argument 'path'"),
        ("count_objects", '{"cls": 2}', "'cls' must be a string"),
        ("count_objects", '["building"]', "arguments must be a JSON object"),
    ],
)
def test_malformed_calls_go_back_to_the_model(tmp_path, llm_server, pair, direct, name, arguments, error):
    llm = llm_server(
        [call(name, arguments, "bad"), call("count_objects", '{"cls": "building"}', "good"), text("done")]
    )
    agent = build_agent(tmp_path / "session", llm_url=llm.url)
    agent.set_images(*pair)
    answer = agent.ask("how many buildings were built?")

    assert answer["reply"] == "done"
    bad, good = answer["tool_calls"]
    assert bad["name"] == name and error in bad["error"] and "result" not in bad
    message, fed = tool_message(llm.requests[1])
    assert message["tool_call_id"] == "bad" and fed == {"error": bad["error"]}
    # the loop went on: the corrected call ran and its result reached the model
    assert good["result"] == {"class": "building", "count": direct["classes"]["building"]["objects"]}
    message, fed = tool_message(llm.requests[2])
    assert message["tool_call_id"] == "good" and fed == good["result"]


def test_tool_failures_become_errors_for_the_model(tmp_path, llm_server, pair, direct):
    llm = llm_server(
        [
            call("detect_changes", "{}", "c0"),  # before any images are set
            text("Please load two images."),
            call("changed_area", '{"cls": "building", "units": "m2"}', "c1"),  # resolution unknown
            text("Unknown resolution."),
            call("changed_area", '{"cls": "building", "units": "m2"}', "c2"),  # after setting 0.5 m
            text("Done."),
            call("detect_changes", "{}", "c3"),  # the after image has been deleted
            text("Sorry."),
        ]
    )
    agent = build_agent(tmp_path / "session", llm_url=llm.url)
    first = agent.ask("what changed?")
    assert first["tool_calls"][0]["error"].startswith("no images are set")
    assert first["reply"] == "Please load two images."
    assert "No images are loaded" in llm.requests[0]["messages"][0]["content"]

    copy = tmp_path / "copy"
    copy.mkdir()
    a, b = (shutil.copy(p, copy / f"{side}.png") for side, p in zip("ab", pair, strict=True))
    agent.set_images(a, b)
    metres = agent.ask("how many square metres of buildings?")["tool_calls"][0]
    assert "ground resolution of these images is not known" in metres["error"]
    assert "use units 'pixels' or 'percent'" in tool_message(llm.requests[3])[1]["error"]

    agent.session.gsd_m = 0.5
    area = agent.ask("and now?")["tool_calls"][0]["result"]
    assert area == {
        "class": "building",
        "units": "m2",
        "value": direct["classes"]["building"]["pixels"] * 0.25,
    }

    agent.set_images(a, b)  # a new pair: nothing cached
    Path(b).unlink()
    gone = agent.ask("what changed?")
    assert gone["tool_calls"][0]["error"] == f"{b}: file not found"
    assert gone["reply"] == "Sorry."


def test_step_limit_stops_the_loop(tmp_path, llm_server, pair):
    llm = llm_server(lambda body: call("count_objects", '{"cls": "road"}', f"c{len(body['messages'])}"))
    agent = build_agent(tmp_path / "session", llm_url=llm.url, max_steps=3)
    agent.set_images(*pair)
    answer = agent.ask("count forever")
    assert len(llm.requests) == 3 and len(answer["tool_calls"]) == 3
    assert "stopped after 3 steps" in answer["reply"] and "step limit" in answer["reply"]
    assert all("result" in c for c in answer["tool_calls"])


def test_react_fallback_when_the_server_rejects_tools(tmp_path, llm_server, pair, direct):
    llm = llm_server(
        [
            text('Thought: count them\nAction: count_objects\nAction Input: {"cls": "building"}'),
            text("Thought: area\nAction: changed_area\nAction Input: {cls: building}"),
            text("I think it is fine."),  # neither an action nor a final answer
            text("Thought: done\nFinal Answer: Some buildings were built."),
            text("Final Answer: hello"),
        ],
        reject_tools=True,
    )
    agent = build_agent(tmp_path / "session", llm_url=llm.url)
    agent.set_images(*pair)
    answer = agent.ask("how many buildings were built?")

    assert answer["reply"] == "Some buildings were built."
    assert agent.tool_mode == "react"
    rejected, *react = llm.requests
    assert "tools" in rejected and all("tools" not in r for r in react)
    system = react[0]["messages"][0]["content"]
    assert (
        "Action Input:" in system
        and "count_objects" in system
        and "one of road|building|tree|water" in system
    )
    assert react[0]["stop"] == ["Observation:"]

    count, broken = answer["tool_calls"]
    assert count["result"] == {"class": "building", "count": direct["classes"]["building"]["objects"]}
    assert "arguments are not valid JSON" in broken["error"]
    observations = [r["messages"][-1] for r in react[1:4]]
    assert all(m["role"] == "user" and m["content"].startswith("Observation: ") for m in observations)
    assert json.loads(observations[0]["content"][len("Observation: ") :]) == count["result"]
    assert "not valid JSON" in observations[1]["content"]
    assert "neither 'Action:' nor 'Final Answer:'" in observations[2]["content"]

    # the next message goes straight to ReAct: no second rejected request
    assert agent.ask("hi")["reply"] == "hello"
    assert "tools" not in llm.requests[-1] and len(llm.requests) == 6


def test_parse_react_is_strict():
    assert parse_react("Thought: x\nFinal Answer: yes\nmore") == ("final", "yes\nmore")
    assert parse_react('Action: ground\nAction Input: {"query": "roads"}\nObservation: made up') == (
        "action",
        "ground",
        {"query": "roads"},
    )
    # an action comes first: a final answer the model wrote after it (inventing the result) is ignored
    assert parse_react("Action: describe_change\nAction Input: {}\nFinal Answer: x")[0] == "action"
    assert parse_react("Action: count_objects\nAction Input: cls=road") == (
        "action",
        "count_objects",
        "cls=road",
    )
    for bad, why in [
        ("Action: count_objects", "must be followed by a line 'Action Input"),
        ("Action:\nAction Input: {}", "names no tool"),
        ('Action: x\nAction Input: ["road"]', "must be a JSON object"),
        ("Final Answer:   ", "is empty"),
        ("no protocol at all", "neither"),
    ]:
        with pytest.raises(ToolError, match=re.escape(why)):
            parse_react(bad)


def test_scene_report_tool(tmp_path, llm_server):
    pytest.importorskip("rasterio")
    from changescope.geo.synth_scene import write_synth_scene

    scene = write_synth_scene(tmp_path / "scene", size=256, seed=3, changed=True)
    llm = llm_server([call("scene_report", "{}"), text("done")])
    agent = build_agent(tmp_path / "session", llm_url=llm.url)
    assert "scene_report" not in {t.name for t in available_tools(agent.session)}
    agent.set_scene(scene["A"], scene["B"])
    [record] = agent.ask("map the whole scene")["tool_calls"]
    summary = json.loads((tmp_path / "session" / "scene" / "summary.json").read_text())
    result = record["result"]
    assert result["classes"] == summary["classes"] and result["regions_total"] == summary["regions_total"]
    assert result["georeferenced"] and result["crs"] == "EPSG:32633"
    assert set(result["files"]) == {"changes.tif", "changes.geojson", "report.html", "summary.json"}
    assert "scene_report" in {t["function"]["name"] for t in llm.requests[0]["tools"]}


@pytest.fixture(scope="module")
def vqa_model(tmp_path_factory):
    """An untrained tiny model with VQA and grounding heads (the plumbing is what is tested, not answers)."""
    from changescope.models.change_model import ChangeModel
    from changescope.models.hub import save_pretrained
    from changescope.models.presets import build_config
    from changescope.models.processor import ChangeProcessor

    config = build_config(
        "lite-words",
        0,
        backbone_pretrained=False,
        image_size=64,
        encoder_kwargs={"d_model": 32, "num_layers": 1, "num_heads": 4},
        question_kwargs={"buckets": 64, "dim": 16},
        query_kwargs={"num_layers": 1, "num_heads": 4},
        answers=["0", "1", "no", "yes"],
        qtypes=["change_or_not", "count"],
        answer_types={"change_or_not": [2, 3], "count": [0, 1]},
        classes=CLASSES,
        mask_head_kwargs={"channels": 16},
        grounding=True,
    )
    path = tmp_path_factory.mktemp("vqa") / "model"
    save_pretrained(ChangeModel(config).eval(), ChangeProcessor(None, 64, 42), path)
    return path


def test_answer_question_and_ground_tools(tmp_path, llm_server, pair, vqa_model):
    from changescope.tasks.vqa import ask_pair

    question = "how many buildings were built?"
    llm = llm_server(
        [
            call("answer_question", json.dumps({"question": question}), "q"),
            call("answer_question", json.dumps({"question": "x" * 513}), "long"),
            call("ground", json.dumps({"query": " new   buildings "}), "g"),
            call("ground", json.dumps({"query": "   "}), "blank"),
            text("done"),
        ]
    )
    agent = build_agent(tmp_path / "session", model=vqa_model, llm_url=llm.url)
    agent.set_images(*pair)
    answered, too_long, grounded, blank = agent.ask(question)["tool_calls"]

    offered = {t["function"]["name"] for t in llm.requests[0]["tools"]}
    assert {"answer_question", "ground", "count_objects"} <= offered and "describe_change" not in offered
    session = agent.session
    direct = ask_pair(session.model, session.processor, *pair, question)
    assert {k: v for k, v in answered["result"].items() if k != "files"} == direct.result
    assert "'question' must be 1 to 512 characters long" in too_long["error"]
    assert grounded["result"]["query"] == "new buildings"  # as check_question normalises it
    assert (
        grounded["result"]["grounding"]
        == ask_pair(session.model, session.processor, *pair, "new buildings").result["grounding"]
    )
    assert blank["error"] == "the question is empty"  # check_question's error reaches the model
    for record in (answered, grounded):
        files = record["result"]["files"]
        assert set(files) == {"overlay.png", "mask.png", "answer.json"}
        assert len({Path(p).parent for p in files.values()}) == 1  # one directory per call
        for path in files.values():
            assert (tmp_path / "session" / path).is_file()
    assert (
        Path(answered["result"]["files"]["mask.png"]).parent
        != Path(grounded["result"]["files"]["mask.png"]).parent
    )


def test_terminal_chat(tmp_path, llm_server, pair, monkeypatch, capsys):
    import io

    from changescope.agent.chat import chat

    llm = llm_server([call("changed_area", '{"cls": "all", "units": "m2"}'), text("That much.")])
    lines = ["/images nope.png other.png", "/gsd 0.5", "how much changed?", "/bogus", "/quit"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    chat(*pair, llm_url=llm.url, session_dir=tmp_path / "session")
    out = capsys.readouterr().out
    assert "error: nope.png: not found" in out
    assert '[changed_area] {"cls": "all", "units": "m2"} -> {"class": "all", "units": "m2"' in out
    assert "agent> That much." in out and "unknown command or wrong arguments: /bogus" in out
    assert f"files go to {tmp_path / 'session'}, kept" in out


def test_terminal_chat_removes_its_temporary_folder(tmp_path, llm_server, pair, monkeypatch, capsys):
    import io
    import tempfile

    from changescope.agent.chat import chat

    llm = llm_server([call("describe_change", "{}"), text("A building.")])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # mkdtemp's folder, for this test only
    monkeypatch.setattr("sys.stdin", io.StringIO("what changed?\n/quit\n"))
    chat(*pair, llm_url=llm.url)
    out = capsys.readouterr().out
    assert "agent> A building." in out and "removed when the chat ends" in out
    assert not list(tmp_path.glob("changescope-chat-*"))


# -- sessions, clients and the local backend's pure parts ------------------------------------------------


def test_session_checks_inputs(tmp_path, pair):
    session = Session(tmp_path / "s")
    with pytest.raises(DataError, match="not found"):
        session.set_images(tmp_path / "missing.png", pair[1])
    from PIL import Image

    Image.new("RGB", (10, 12)).save(tmp_path / "small.png")
    with pytest.raises(DataError, match="one size"):
        session.set_images(pair[0], tmp_path / "small.png")
    with pytest.raises(ChangescopeError, match="gsd_m must be a positive"):
        Session(tmp_path / "s", gsd_m=0)
    with pytest.raises(ChangescopeError, match="tool_mode must be one of"):
        build_agent(tmp_path / "s", llm_url="http://127.0.0.1:9/v1", tool_mode="guess")
    with pytest.raises(ChangescopeError, match="the message is empty"):
        build_agent(tmp_path / "s", llm_url="http://127.0.0.1:9/v1").ask("  ")


def test_unreachable_server_is_a_one_line_error():
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = OpenAIChat(f"http://127.0.0.1:{port}/v1", "m", timeout=5)
    with pytest.raises(LLMError, match=f"cannot reach the LLM server at http://127.0.0.1:{port}/v1"):
        client.complete([{"role": "user", "content": "hi"}])


def test_local_reply_checks_numbers_against_the_results():
    count = [("count_objects", {"class": "building", "count": 3})]
    assert templated_reply(count) == "3 changed building objects."
    assert _numbers_supported("3 buildings were built.", count)
    assert not _numbers_supported("10 buildings were built.", count)  # invented
    assert not _numbers_supported("Buildings were built.", count)  # the count left out
    area = [("changed_area", {"class": "all", "units": "percent", "value": 12.3456})]
    assert _numbers_supported("About 12.3 % of the image changed.", area)
    assert templated_reply(area) == "Changed area (all classes): 12.3456 % of the image."
    error = [("changed_area", {"error": "areas in m2 cannot be given"})]
    assert _numbers_supported("Areas in m2 cannot be given.", error)  # the 2 of m2 is no number
    assert templated_reply(error) == "changed_area failed: areas in m2 cannot be given"


def test_local_backend_finds_the_packaged_gguf(tmp_path):
    assert default_gguf().suffix == ".gguf" and default_gguf().stat().st_size > 50e6
    with pytest.raises(DataError, match="GGUF file not found"):
        LocalChat(tmp_path / "none.gguf")


@pytest.mark.slow
def test_local_smollm2_makes_a_valid_call_and_replies(tmp_path, pair, direct):
    """The packaged SmolLM2-135M for real (about 30 s to load): constrained choice gives a valid call."""
    agent = build_agent(tmp_path / "session")
    agent.set_images(*pair)
    answer = agent.ask("how many buildings were built?")
    [record] = answer["tool_calls"]
    assert record == {
        "name": "count_objects",
        "arguments": {"cls": "building"},
        "result": {"class": "building", "count": direct["classes"]["building"]["objects"]},
    }
    # the reply states the count (the model's sentence if it does, else the templated one)
    assert str(direct["classes"]["building"]["objects"]) in answer["reply"]

    area = agent.ask("what percentage of the image changed?")
    [record] = area["tool_calls"]
    assert record["name"] == "changed_area" and record["arguments"]["units"] == "percent"
    assert "result" in record and area["reply"]
