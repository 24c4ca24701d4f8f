"""`changescope serve` and `changescope chat` as commands: a real server process answering on 127.0.0.1,
and the terminal chat driven through stdin against the scripted OpenAI-protocol server of test_agent
(a test double for an LLM server, as stated there)."""

import json
import socket
import subprocess
import sys
import time
import urllib.request

from test_agent import call, llm_server, pair, text  # noqa: F401  (fixtures)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_command_answers_health_then_stops(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "changescope", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                    health = json.loads(response.read())
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.5)
        assert health["status"] == "ok" and "mask" in health["tasks"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_command_refuses_a_bad_port():
    proc = subprocess.run(
        [sys.executable, "-m", "changescope", "serve", "--port", "70000"], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "--port" in proc.stderr


def test_chat_command_through_stdin(tmp_path, llm_server, pair):  # noqa: F811
    llm = llm_server([call("detect_changes", "{}"), text("Roads and buildings changed.")])
    proc = subprocess.run(
        [sys.executable, "-m", "changescope", "chat", *map(str, pair), "--llm-url", llm.url],
        input="what changed?\n/quit\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[detect_changes]" in proc.stdout and "agent> Roads and buildings changed." in proc.stdout
    one_image = subprocess.run(
        [sys.executable, "-m", "changescope", "chat", str(pair[0])], capture_output=True, text=True
    )
    assert one_image.returncode != 0 and "BEFORE AFTER" in one_image.stderr
