"""LLM cues whose answers are unusable: fallbacks are marked, asked again, refused beyond a
threshold; several caches of one backend are never chosen silently."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from refbench.cues import LLMBackend, build_cues, build_cues_with_stats, ensure_cues, load_cues
from refbench.cues.base import config_hash
from refbench.cues.heuristic import chunk
from refbench.cues.store import describe_cue_store, select_cue_file
from refbench.errors import ConfigError, DataError
from tests.test_cues_llm import FakeDataset

TEXTS = [f"the dog number {i} on the left" for i in range(10)]


class Endpoint:
    """A chat-completions server whose answers are HTML, JSON of another shape, or good."""

    def __init__(self) -> None:
        self.mode = "html"
        self.calls: list[str] = []
        self.lock = threading.Lock()


def _handler(endpoint: Endpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["messages"][-1]["content"]
            text = prompt.rsplit("Referring expression: ", 1)[1].split("\n", 1)[0]
            with endpoint.lock:
                endpoint.calls.append(text)
            if endpoint.mode == "html":
                data, kind = b"<html><body>502 Bad Gateway</body></html>", "text/html"
            elif endpoint.mode == "wrong-json":
                data, kind = json.dumps({"result": {"text": "1. a dog"}}).encode(), "application/json"
            else:
                content = f"1. a dog\n2. {text}"
                data = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
                kind = "application/json"
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@pytest.fixture
def endpoint():
    state = Endpoint()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("REFBENCH_CUES_MAX_FALLBACK", raising=False)
    monkeypatch.delenv("REFBENCH_CUE_CONFIG", raising=False)


def llm(url: str, model: str = "mistral-7b", **options) -> LLMBackend:
    settings = {"model": model, "timeout": 2.0, "retries": 0, "backoff": 0.01,
                "concurrency": 1, "parse_retries": 0}
    settings.update(options)
    return LLMBackend(url, **settings)


def _lines(tmp_path):
    return [json.loads(line) for path in sorted(tmp_path.rglob("*.jsonl"))
            for line in path.read_text().splitlines()]


@pytest.mark.parametrize("mode", ["html", "wrong-json"])
def test_an_endpoint_with_no_usable_answer_is_refused_and_its_stand_ins_are_marked(
        endpoint, tmp_path, mode):
    url, state = endpoint
    state.mode = mode
    data = FakeDataset(TEXTS)
    with pytest.raises(DataError) as caught:
        build_cues(data, llm(url), cache_dir=tmp_path, progress=False)
    message = str(caught.value)
    assert "\n" not in message
    assert "heuristic stand-ins instead of llm cues" in message
    assert "refbench cues build --split synth-test --backend llm" in message
    assert "REFBENCH_CUES_MAX_FALLBACK" in message
    lines = _lines(tmp_path)
    assert lines and all(line["fallback"] is True for line in lines)
    assert all(line["cues"] == chunk(line["text"]) for line in lines)
    # 5% of 10 expressions is 0.5: the first fallback already exceeds it, so the build stops
    assert len(state.calls) < len(TEXTS)


def test_cached_fallbacks_are_asked_again_once_the_endpoint_works(endpoint, tmp_path):
    url, state = endpoint
    data = FakeDataset(TEXTS)
    cues, stats = build_cues_with_stats(data, llm(url), cache_dir=tmp_path, progress=False,
                                        max_fallback=1.0)
    assert stats.fallback == len(TEXTS)
    state.mode, state.calls = "good", []
    cues, stats = build_cues_with_stats(data, llm(url), cache_dir=tmp_path, progress=False)
    assert sorted(state.calls) == sorted(TEXTS)
    assert (stats.from_cache, stats.built, stats.fallback, stats.retried) == (0, 10, 0, 10)
    first = data.expressions()[0]
    assert cues[first.key][:2] == ("a dog", first.text)
    assert load_cues(data, "llm", cache_dir=tmp_path)[first.key][:2] == ("a dog", first.text)
    state.calls = []
    build_cues(data, llm(url), cache_dir=tmp_path, progress=False)
    assert state.calls == []  # good answers are not asked again


def test_fallbacks_up_to_the_threshold_are_kept_and_more_can_be_allowed(
        endpoint, tmp_path, monkeypatch):
    url, state = endpoint
    data = FakeDataset(TEXTS)
    build_cues(data, llm(url), cache_dir=tmp_path, progress=False, max_fallback=1.0)
    with pytest.raises(DataError, match="10 of 10 expressions .* heuristic stand-ins"):
        load_cues(data, "llm", cache_dir=tmp_path)
    with pytest.raises(DataError, match="heuristic stand-ins"):
        ensure_cues(data, "llm", 5, cache_dir=tmp_path)
    assert len(load_cues(data, "llm", cache_dir=tmp_path, max_fallback=1.0)) == len(TEXTS)
    monkeypatch.setenv("REFBENCH_CUES_MAX_FALLBACK", "1")
    assert len(load_cues(data, "llm", cache_dir=tmp_path)) == len(TEXTS)
    assert ensure_cues(data, "llm", 5, cache_dir=tmp_path)[0] == "llm"
    monkeypatch.setenv("REFBENCH_CUES_MAX_FALLBACK", "lots")
    with pytest.raises(ConfigError, match="REFBENCH_CUES_MAX_FALLBACK='lots'"):
        load_cues(data, "llm", cache_dir=tmp_path)


def test_several_caches_of_one_backend_are_an_error_naming_them(endpoint, tmp_path, monkeypatch):
    url, state = endpoint
    state.mode = "good"
    data = FakeDataset(TEXTS[:3])
    first, second = llm(url, model="model-a"), llm(url, model="model-b")
    build_cues(data, first, cache_dir=tmp_path, progress=False)
    build_cues(data, second, cache_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError) as caught:
        load_cues(data, "llm", cache_dir=tmp_path)
    message = str(caught.value)
    assert "model model-a" in message and "model model-b" in message
    assert config_hash(first.config()) in message and config_hash(second.config()) in message
    chosen = select_cue_file(data, "llm", config_hash(first.config()), cache_dir=tmp_path)
    assert chosen.name == f"llm-{config_hash(first.config())}.jsonl"
    monkeypatch.setenv("REFBENCH_CUE_CONFIG", config_hash(second.config()))
    assert len(load_cues(data, "llm", cache_dir=tmp_path)) == 3
    with pytest.raises(ConfigError, match="no llm cue cache with config 'abc'"):
        load_cues(data, "llm", cache_dir=tmp_path, cue_config="abc")


def test_describe_cue_store_names_file_model_prompt_and_fallbacks(endpoint, tmp_path):
    url, state = endpoint
    data = FakeDataset(TEXTS[:4])
    backend = llm(url)
    build_cues(data, backend, cache_dir=tmp_path, progress=False, max_fallback=1.0)
    described = describe_cue_store(data, "llm", cache_dir=tmp_path)
    assert described["backend"] == "llm"
    assert described["config_hash"] == config_hash(backend.config())
    assert described["file"].endswith(f"llm-{config_hash(backend.config())}.jsonl")
    assert described["config"]["model"] == "mistral-7b"
    assert described["config"]["prompt"] == backend.config()["prompt"]
    assert (described["expressions"], described["fallback"]) == (4, 4)
    assert len(described["refs_sha256"]) == 64
