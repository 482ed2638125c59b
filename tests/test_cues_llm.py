"""The llm cue backend against a real HTTP server on 127.0.0.1 that answers well, badly,
slowly and with errors. Short timeouts keep the file to a few seconds."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from refbench.api import Expression
from refbench.cues import EndpointError, LLMBackend, build_cues, get_backend
from refbench.cues.heuristic import chunk
from refbench.cues.llm import ParseError, build_prompt, parse_numbered_list
from refbench.errors import ConfigError

SECRET = "sk-test-DO-NOT-WRITE-4242"


@dataclass
class ServerState:
    """What the fake endpoint saw and how it behaves."""

    calls: dict[str, list[float]] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0
    delay: float = 0.0
    fail: set[str] = field(default_factory=set)
    headers: list[dict[str, str]] = field(default_factory=list)
    bodies: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _question(prompt: str) -> str:
    return prompt.rsplit("Referring expression: ", 1)[1].split("\n", 1)[0]


def make_handler(state: ServerState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout)

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = _question(body["messages"][-1]["content"])
            with state.lock:
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
                state.calls.setdefault(text, []).append(time.monotonic())
                attempt = len(state.calls[text])
                state.headers.append(dict(self.headers))
                state.bodies.append(body)
            try:
                if state.delay:
                    time.sleep(state.delay)
                if text in state.fail or text.startswith("always-500"):
                    return self._send(500, {"error": "boom"})
                if text.startswith("error-twice") and attempt <= 2:
                    return self._send(500, {"error": "boom"})
                if text.startswith("slow-once") and attempt == 1:
                    time.sleep(0.6)
                if text.startswith("garbage") or (text.startswith("flaky") and attempt == 1):
                    content = "Sorry, I can only talk about the weather."
                else:
                    content = f"Sure:\n1. a thing\n2. the {text}\n"
                self._send(200, {"choices": [{"message": {"role": "assistant",
                                                          "content": content}}]})
            finally:
                with state.lock:
                    state.in_flight -= 1

    return Handler


@pytest.fixture
def server():
    state = ServerState()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    try:
        yield url, state
    finally:
        httpd.shutdown()
        httpd.server_close()


@dataclass(frozen=True)
class FakeInfo:
    id: str = "synth-test"
    dataset: str = "fakeset"
    split_by: str = "fake"


class FakeDataset:
    """The ReferDataset methods the cue builder uses."""

    def __init__(self, texts: list[str]) -> None:
        self.info = FakeInfo()
        self._expressions = [
            Expression(text=t, image_id=i // 2, ref_id=i, ann_id=i, sent_id=100 + i)
            for i, t in enumerate(texts)
        ]

    def expressions(self, sentences: str = "all") -> list[Expression]:
        return list(self._expressions)


def backend(url: str, **options) -> LLMBackend:
    settings = {"model": "mistral-7b", "timeout": 0.3, "retries": 2, "backoff": 0.02,
                "concurrency": 2}
    settings.update(options)
    return LLMBackend(url, **settings)


def test_good_answers_are_parsed_and_the_key_is_sent(server, monkeypatch) -> None:
    url, state = server
    monkeypatch.setenv("REFBENCH_LLM_API_KEY", SECRET)
    out = backend(url).decompose(["man on left", "red car"])
    assert out == [["a thing", "the man on left"], ["a thing", "the red car"]]
    assert all(h.get("Authorization") == f"Bearer {SECRET}" for h in state.headers)
    assert {b["model"] for b in state.bodies} == {"mistral-7b"}
    prompt = state.bodies[0]["messages"][0]["content"]
    # the four parts: instruction, output constraints, in-context examples, the question
    assert "Decompose the referring expression" in prompt
    assert "numbered list" in prompt and "at most 5 phrases" in prompt
    assert prompt.count("Referring expression: ") == 7  # 6 examples + the question
    assert prompt.rstrip().endswith("Phrases:")


def test_unparseable_answer_is_retried_then_falls_back(server, tmp_path) -> None:
    url, state = server
    data = FakeDataset(["garbage man in red shirt", "flaky dog on bed", "good cat"])
    cues = build_cues(data, backend(url, parse_retries=1), k=5, cache_dir=tmp_path,
                      progress=False, max_fallback=0.5)
    assert len(state.calls["garbage man in red shirt"]) == 2  # asked, re-asked, then fallback
    assert len(state.calls["flaky dog on bed"]) == 2
    lines = [json.loads(line) for path in tmp_path.rglob("*.jsonl")
             for line in path.read_text().splitlines()]
    by_text = {line["text"]: line for line in lines}
    assert by_text["garbage man in red shirt"]["fallback"] is True
    assert by_text["garbage man in red shirt"]["cues"] == chunk("garbage man in red shirt")
    assert by_text["flaky dog on bed"]["fallback"] is False
    assert by_text["good cat"]["cues"] == ["a thing", "the good cat"]
    key = data.expressions()[2].key
    assert cues[key] == ("a thing", "the good cat", "the good cat", "the good cat",
                         "the good cat")


def test_slow_answer_times_out_and_is_retried(server) -> None:
    url, state = server
    assert backend(url).decompose(["slow-once bus"]) == [["a thing", "the slow-once bus"]]
    assert len(state.calls["slow-once bus"]) == 2


def test_server_errors_are_retried_with_growing_backoff(server) -> None:
    url, state = server
    assert backend(url, backoff=0.05).decompose(["error-twice van"]) == [
        ["a thing", "the error-twice van"]]
    first, second, third = state.calls["error-twice van"]
    assert second - first >= 0.05 and third - second >= 0.1


def test_persistent_errors_name_the_url_and_expression(server) -> None:
    url, state = server
    with pytest.raises(EndpointError) as caught:
        backend(url, retries=1).decompose(["always-500 truck"])
    assert url in str(caught.value) and "always-500 truck" in str(caught.value)
    assert len(state.calls["always-500 truck"]) == 2


def test_connection_refused_names_the_url() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(EndpointError, match=f"{url}/chat/completions is unreachable"):
        backend(url).decompose(["man"])


def test_concurrency_is_bounded(server) -> None:
    url, state = server
    state.delay = 0.1
    texts = [f"item {i}" for i in range(9)]
    out = backend(url, concurrency=3).decompose(texts)
    assert out == [["a thing", f"the item {i}"] for i in range(9)]
    assert 2 <= state.max_in_flight <= 3


def test_failed_build_keeps_finished_items_and_rerun_continues(server, tmp_path) -> None:
    url, state = server
    texts = [f"car {i}" for i in range(6)]
    data = FakeDataset(texts)
    state.fail = {"car 3"}
    with pytest.raises(EndpointError) as caught:
        build_cues(data, backend(url, concurrency=1, retries=0), cache_dir=tmp_path,
                   progress=False)
    assert data.expressions()[3].key in str(caught.value)  # names the item
    assert "rerun" in str(caught.value)
    cache = next(tmp_path.rglob("*.jsonl"))
    kept = [json.loads(line)["text"] for line in cache.read_text().splitlines()]
    assert kept == ["car 0", "car 1", "car 2"]
    state.fail = set()
    state.calls.clear()
    cues = build_cues(data, backend(url, concurrency=1, retries=0), cache_dir=tmp_path,
                      progress=False)
    assert sorted(state.calls) == ["car 3", "car 4", "car 5"]  # only what was missing
    assert len(cues) == 6


def test_api_key_never_reaches_files_or_config(server, tmp_path, monkeypatch) -> None:
    url, _ = server
    monkeypatch.setenv("REFBENCH_LLM_API_KEY", SECRET)
    llm = backend(url)
    assert SECRET not in json.dumps(llm.config())
    build_cues(FakeDataset(["man", "woman"]), llm, cache_dir=tmp_path, progress=False)
    files = [p for p in Path(tmp_path).rglob("*") if p.is_file()]
    assert files and all(SECRET.encode() not in p.read_bytes() for p in files)


def test_configuration_from_environment(monkeypatch) -> None:
    monkeypatch.delenv("REFBENCH_LLM_BASE_URL", raising=False)
    monkeypatch.delenv("REFBENCH_LLM_MODEL", raising=False)
    with pytest.raises(ConfigError, match="REFBENCH_LLM_BASE_URL"):
        get_backend("llm")
    monkeypatch.setenv("REFBENCH_LLM_BASE_URL", "http://127.0.0.1:9/v1/")
    monkeypatch.setenv("REFBENCH_LLM_MODEL", "qwen")
    chosen = get_backend("auto", concurrency=2)
    assert isinstance(chosen, LLMBackend)
    assert chosen.url == "http://127.0.0.1:9/v1/chat/completions"
    assert chosen.config()["model"] == "qwen"
    other = get_backend("llm", model="mistral")
    assert other.config() != chosen.config()


def test_parse_numbered_list_is_strict() -> None:
    assert parse_numbered_list("Here you go:\n1. a man.\n2) the man in red\n\nDone.") == [
        "a man", "the man in red"]
    for bad in ("a man, the man in red", "1. a man\n3. the man", "1. a man\nnote\n2. the man",
                "1. a man. 2. the man in red", "1. \n2. x", "2. a man"):
        with pytest.raises(ParseError):
            parse_numbered_list(bad)
    assert "Referring expression: the red car\nPhrases:" in build_prompt("the red car")
