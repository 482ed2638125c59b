"""Cues from any OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp, Ollama, hosted).

The prompt has the four parts of PCNet (Sec. 3.1, App. A.1): a general instruction (P_G), output
constraints (P_C), in-context examples (P_E) and the question (P_Q). The answer must be a
numbered list; an answer that cannot be parsed is asked again, then the heuristic chunker
stands in and the result is marked as a fallback. The endpoint is configured by
``REFBENCH_LLM_BASE_URL`` and ``REFBENCH_LLM_MODEL``; the API key is read only from
``REFBENCH_LLM_API_KEY`` and never written anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from refbench.cues.base import CueBackend, CueResult
from refbench.cues.heuristic import HeuristicBackend
from refbench.errors import ConfigError, RefbenchError

ENV_BASE_URL = "REFBENCH_LLM_BASE_URL"
ENV_MODEL = "REFBENCH_LLM_MODEL"
ENV_API_KEY = "REFBENCH_LLM_API_KEY"

GENERAL_INSTRUCTION = (
    "A referring expression describes one object in an image. Decompose the referring "
    "expression into short phrases about that target object. Start with the target object "
    "itself, then add one attribute, relation or action of the target at a time."
)
OUTPUT_CONSTRAINTS = (
    "Answer with a numbered list only, one phrase per line, written as '1. phrase'. Give at "
    "most {max_phrases} phrases of at most {max_words} words each. Every phrase must name the "
    "target object. Use only information in the expression; do not add anything and do not "
    "explain."
)
EXAMPLES = (
    ("woman in white shirt looking down at laptop computer",
     ["a woman", "a woman in a white shirt", "a woman looking down at a laptop computer"]),
    ("catcher in blue and gray uniform reaching for the ball",
     ["a catcher", "a catcher in a blue and gray uniform", "a catcher reaching for the ball"]),
    ("left zebra", ["a zebra", "the zebra on the left"]),
    ("the small brown dog sitting under the table next to the man in black",
     ["a dog", "a small brown dog", "a dog sitting under the table",
      "a dog next to the man in black"]),
    ("a slice of pizza with olives closest to the glass of beer",
     ["a slice of pizza", "a slice of pizza with olives",
      "a slice of pizza closest to the glass of beer"]),
    ("guy on the right with a striped tie who is laughing",
     ["a guy", "a guy on the right", "a guy with a striped tie", "a guy who is laughing"]),
)
QUESTION = "Referring expression: {text}\nPhrases:"
PROMPT_VERSION = 1

_ITEM = re.compile(r"^\s*(\d{1,2})\s*[.)]\s*(.+?)\s*$")
_INLINE_ITEM = re.compile(r"\s\d{1,2}[.)]\s")


class EndpointError(ConfigError):
    """The LLM endpoint cannot be reached or keeps failing."""


class ParseError(ValueError):
    """An LLM answer that is not a numbered list of phrases."""


def build_prompt(text: str, max_phrases: int = 5, max_words: int = 12) -> str:
    """The four-part prompt (P_G, P_C, P_E, P_Q) for one expression."""
    examples = []
    for question, phrases in EXAMPLES:
        answer = "\n".join(f"{i}. {p}" for i, p in enumerate(phrases, start=1))
        examples.append(f"Referring expression: {question}\nPhrases:\n{answer}")
    parts = [
        GENERAL_INSTRUCTION,
        OUTPUT_CONSTRAINTS.format(max_phrases=max_phrases, max_words=max_words),
        "Examples:\n\n" + "\n\n".join(examples),
        QUESTION.format(text=text.strip()),
    ]
    return "\n\n".join(parts)


def parse_numbered_list(answer: str, max_phrases: int = 5, max_words: int = 20) -> list[str]:
    """Phrases of an answer shaped ``1. ...`` / ``2. ...``; anything else is a `ParseError`.

    Lines before the first item and after the last are ignored (a model's preamble); the items
    themselves must be consecutive lines numbered 1, 2, 3, ..., each a short phrase.
    """
    lines = [line for line in answer.strip().splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if _ITEM.match(line)]
    if not starts:
        raise ParseError("no numbered list in the answer")
    first, last = starts[0], starts[-1]
    if starts != list(range(first, last + 1)):
        raise ParseError("text between the numbered items")
    phrases: list[str] = []
    for expected, line in enumerate(lines[first : last + 1], start=1):
        match = _ITEM.match(line)
        assert match is not None
        if int(match.group(1)) != expected:
            raise ParseError(f"item numbered {match.group(1)} where {expected} was expected")
        phrase = match.group(2).strip().strip("\"'*`").rstrip(".;,").strip()
        if not phrase:
            raise ParseError(f"item {expected} is empty")
        if _INLINE_ITEM.search(f" {phrase} "):
            raise ParseError(f"item {expected} holds several numbered items on one line")
        if len(phrase.split()) > max_words:
            raise ParseError(f"item {expected} has more than {max_words} words")
        phrases.append(phrase)
    if len(phrases) > 2 * max_phrases:
        raise ParseError(f"{len(phrases)} items, far more than the {max_phrases} asked for")
    return phrases


class _Transient(Exception):
    """A failure worth retrying: timeout, 5xx, 429, a dropped connection."""


class LLMBackend(CueBackend):
    """Cues from a chat-completions endpoint, with retries, backoff and bounded concurrency."""

    name = "llm"

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        *,
        concurrency: int = 4,
        timeout: float = 60.0,
        retries: int = 3,
        parse_retries: int = 1,
        backoff: float = 1.0,
        max_phrases: int = 5,
        temperature: float = 0.0,
        max_tokens: int = 200,
    ) -> None:
        base_url = base_url or os.environ.get(ENV_BASE_URL, "")
        model = model or os.environ.get(ENV_MODEL, "")
        if not base_url:
            raise ConfigError(
                f"the llm cue backend needs an endpoint: set {ENV_BASE_URL} (e.g. "
                "http://127.0.0.1:8000/v1) or pass --base-url, or use --backend heuristic"
            )
        if not model:
            raise ConfigError(
                f"the llm cue backend needs a model name: set {ENV_MODEL} or pass --llm-model"
            )
        if concurrency < 1 or retries < 0 or parse_retries < 0 or timeout <= 0:
            raise ConfigError("concurrency and timeout must be positive, retries non-negative")
        base = base_url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model = model
        self.concurrency = int(concurrency)
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.parse_retries = int(parse_retries)
        self.backoff = float(backoff)
        self.max_phrases = int(max_phrases)
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self._fallback = HeuristicBackend(max_phrases=self.max_phrases)

    def config(self) -> dict[str, Any]:
        """Model, prompt and decoding settings; not the URL (where it runs), never the key."""
        prompt_id = hashlib.sha256(build_prompt("{text}", self.max_phrases).encode()).hexdigest()
        return {
            "backend": self.name,
            "model": self.model,
            "prompt": f"v{PROMPT_VERSION}-{prompt_id[:12]}",
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "max_phrases": self.max_phrases,
            "fallback": self._fallback.config(),
        }

    # --- one request ------------------------------------------------------------------------
    def _post(self, prompt: str) -> str:
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
            }
        ).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        api_key = os.environ.get(ENV_API_KEY)
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            if error.code == 429 or error.code >= 500:
                raise _Transient(f"HTTP {error.code}") from None
            hint = f"check {ENV_API_KEY}" if error.code in (401, 403) else "check the model name"
            raise EndpointError(
                f"LLM endpoint {self.url} refused the request with HTTP {error.code} "
                f"({error.reason}); {hint}"
            ) from None
        except TimeoutError as error:
            raise _Transient(f"no answer within {self.timeout:g} s") from error
        except urllib.error.URLError as error:
            reason = error.reason
            if isinstance(reason, TimeoutError):
                raise _Transient(f"no answer within {self.timeout:g} s") from None
            if isinstance(reason, ConnectionRefusedError | socket.gaierror):
                raise EndpointError(
                    f"LLM endpoint {self.url} is unreachable ({reason}); start the server or fix "
                    f"{ENV_BASE_URL} / --base-url"
                ) from None
            raise _Transient(str(reason)) from None
        except (ConnectionError, OSError) as error:
            raise _Transient(f"{type(error).__name__}: {error}") from None
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ParseError("the response is not a chat completion") from None
        if not isinstance(content, str):
            raise ParseError("the completion has no text content")
        return content

    def _ask(self, prompt: str) -> str:
        """`_post` with retries and exponential backoff for transient failures."""
        for attempt in range(self.retries + 1):
            try:
                return self._post(prompt)
            except _Transient as error:
                if attempt == self.retries:
                    raise EndpointError(
                        f"LLM endpoint {self.url} failed {self.retries + 1} times ({error}); "
                        "check the server, or raise --timeout"
                    ) from None
                time.sleep(self.backoff * (2**attempt))
        raise AssertionError("unreachable")

    def decompose_one(self, text: str) -> CueResult:
        """Ask the endpoint; re-ask on an unparseable answer, then fall back to the heuristic."""
        prompt = build_prompt(text, self.max_phrases)
        problem = ""
        for _ in range(self.parse_retries + 1):
            try:
                answer = self._ask(prompt)
                return CueResult(tuple(parse_numbered_list(answer, self.max_phrases)))
            except ParseError as error:
                problem = str(error)
        phrases = self._fallback.decompose_one(text).phrases
        return CueResult(phrases, fallback=True, note=f"unparseable answer: {problem}")

    def iter_results(self, texts: Sequence[str]) -> Iterator[tuple[int, CueResult]]:
        """Results as they finish, at most `concurrency` requests in flight.

        On an endpoint error no new request starts; those in flight finish and are yielded,
        then the first error is raised with the expression it concerned.
        """
        failure: tuple[int, RefbenchError] | None = None
        stop = threading.Event()
        pending_texts = iter(enumerate(texts))
        running: dict[Future[CueResult], int] = {}
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:

            def submit_next() -> None:
                if stop.is_set():
                    return
                for index, text in pending_texts:
                    running[pool.submit(self.decompose_one, text)] = index
                    return

            for _ in range(self.concurrency):
                submit_next()
            while running:
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in done:
                    index = running.pop(future)
                    error = future.exception()
                    if error is None:
                        yield index, future.result()
                        submit_next()
                    elif isinstance(error, RefbenchError):
                        if failure is None:
                            failure = (index, error)
                        stop.set()
                    else:
                        stop.set()
                        raise error
        if failure is not None:
            index, error = failure
            named = type(error)(f"{error} (while decomposing {texts[index]!r})")
            named.item_index = index  # type: ignore[attr-defined]  # the build names its key
            raise named
