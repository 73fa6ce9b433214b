"""An OpenAI-compatible chat client over httpx, streaming (SSE) from vLLM, llama.cpp and friends.

Every way a server can fail is turned into one LLMError with a sentence a person can act on.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from httpx_sse import EventSource

from voxloop.errors import (
    LLMContextOverflowError,
    LLMModelNotServedError,
    LLMProtocolError,
    LLMServerError,
    LLMUnavailableError,
)
from voxloop.llm import Message
from voxloop.settings import LlmSettings
from voxloop.tools import ToolCall

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 2048
_CONTEXT_WORDS = (
    "context length",
    "context size",
    "exceed_context",
    "maximum context",
    "too long",
    "n_ctx",
)


# Sampling that keeps small models from looping ("they're called spiders, they're called
# spiders, ..."), in each server's own words; the user's llm.extra_body overrides any of it.
# llama.cpp: a mild repetition penalty over the last 128 tokens, and DRY, which penalizes
# repeating a run of 4+ tokens more the longer it gets; vLLM: its repetition penalty.
ENGINE_SAMPLING: dict[str, dict[str, Any]] = {
    "llamacpp": {"repeat_penalty": 1.1, "repeat_last_n": 128, "dry_multiplier": 0.8, "dry_allowed_length": 3},
    "vllm": {"repetition_penalty": 1.1},
}


def server_engine(entries: list[dict[str, Any]]) -> str:
    """Which server answers, from its model list: llama.cpp and vLLM each sign their entries."""
    owners = {str(e.get("owned_by", "")).lower() for e in entries}
    if "llamacpp" in owners:
        return "llamacpp"
    if "vllm" in owners:
        return "vllm"
    return ""


def normalize_url(url: str) -> str:
    """``host:port``, ``http://host:port`` and ``.../v1/`` all mean ``http://host:port/v1``."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    if url.endswith("/chat/completions"):
        url = url[: -len("/chat/completions")]
    if not url.endswith("/v1"):
        url += "/v1"
    return url


def _snippet(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_message(body: str) -> str:
    """The human part of an error body: OpenAI's {"error": {"message"}}, vLLM's, llama.cpp's or raw."""
    try:
        data = json.loads(body)
    except ValueError:
        return _snippet(body) or "no details"
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or _snippet(body))
        if isinstance(err, str):
            return err
        if "detail" in data:
            return str(data["detail"])
    return _snippet(body)


class _CallBuilder:
    """Tool calls as a stream delivers them: the first delta of each (by ``index``) holds its id
    and name, later ones append to its arguments' JSON text."""

    def __init__(self) -> None:
        self._parts: dict[int, dict[str, str]] = {}

    def add(self, deltas: Any, url: str) -> None:
        try:
            for delta in deltas:
                part = self._parts.setdefault(
                    int(delta.get("index", 0)), {"id": "", "name": "", "arguments": ""}
                )
                function = delta.get("function") or {}
                part["id"] = part["id"] or str(delta.get("id") or "")
                part["name"] += str(function.get("name") or "")
                arguments = function.get("arguments")
                part["arguments"] += arguments if isinstance(arguments, str) else json.dumps(arguments or {})
        except (AttributeError, TypeError, ValueError):
            raise LLMProtocolError(
                f"The server at {url} sent a tool call voxloop cannot read ({_snippet(str(deltas))!r})."
            ) from None

    def calls(self) -> list[ToolCall]:
        return [
            ToolCall(p["id"] or f"call_{i}", p["name"], p["arguments"] or "{}")
            for i, p in sorted(self._parts.items())
            if p["name"]
        ]


class OpenAIChat:
    def __init__(
        self,
        url: str,
        settings: LlmSettings,
        transport: httpx.AsyncBaseTransport | None = None,
        notice: Callable[[str], None] = log.warning,
    ) -> None:
        self.url = normalize_url(url)
        self.settings = settings
        self.notice = notice
        self.model = settings.model
        self.context_tokens = settings.context_tokens or DEFAULT_CONTEXT
        timeout = httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s)
        self._client = httpx.AsyncClient(timeout=timeout, transport=transport)
        self.served: list[str] = []
        self.engine = ""  # "llamacpp", "vllm" or "" (another server), known after connect
        self._extra = settings.body()
        self.takes_tools = True  # until the server's template or an answer says otherwise

    # -- plumbing -------------------------------------------------------------------------
    def _unavailable(self, exc: Exception) -> LLMUnavailableError:
        if isinstance(exc, httpx.TimeoutException):
            reason = f"no answer within {self.settings.timeout_s:g} s"
        elif isinstance(exc, httpx.ConnectError):
            text = str(exc).lower()
            unknown_host = "name or service not known" in text or "nodename nor servname" in text
            reason = "host not found" if unknown_host else "connection refused: nothing listens there"
        else:
            reason = _snippet(str(exc)) or type(exc).__name__
        return LLMUnavailableError(
            f"Cannot reach the LLM server at {self.url} ({reason}). "
            "Start one with `voxloop llm start` or pass --llm-url."
        )

    async def _get_json(self, path: str) -> Any:
        try:
            response = await self._client.get(self.url + path)
        except httpx.HTTPError as exc:
            raise self._unavailable(exc) from None
        if response.status_code >= 400:
            raise LLMServerError(
                f"The LLM server at {self.url} answered HTTP {response.status_code} to GET {path}: "
                f"{_error_message(response.text)}. Is --llm-url an OpenAI-compatible /v1 endpoint?"
            )
        try:
            return response.json()
        except ValueError:
            raise LLMProtocolError(
                f"The server at {self.url} did not answer GET {path} with JSON "
                f"(got {_snippet(response.text)!r}). Check that --llm-url points at an "
                "OpenAI-compatible server's /v1."
            ) from None

    # -- ChatModel --------------------------------------------------------------------------
    async def list_models(self) -> list[dict[str, Any]]:
        data = await self._get_json("/models")
        entries = data.get("data") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not all(isinstance(e, dict) and "id" in e for e in entries):
            raise LLMProtocolError(
                f"The server at {self.url} answered GET /models without a model list "
                f"(got {_snippet(json.dumps(data))!r}). Is it an OpenAI-compatible server?"
            )
        return entries

    async def connect(self) -> None:
        entries = await self.list_models()
        self.served = [str(e["id"]) for e in entries]
        self.engine = server_engine(entries)
        self._extra = {**ENGINE_SAMPLING.get(self.engine, {}), **self.settings.body()}
        if not self.served:
            raise LLMModelNotServedError(
                f"The LLM server at {self.url} serves no model yet. Wait for it to load."
            )
        if not self.model:
            self.model = self.served[0]
        elif self.model not in self.served:
            raise LLMModelNotServedError(
                f"Model {self.model!r} is not served at {self.url}. It serves: {', '.join(self.served)}. "
                "Pass one of these to --llm-model, or leave --llm-model out to use the first."
            )
        props = await self._props() if self.engine == "llamacpp" else {}
        if not self.settings.context_tokens:
            self.context_tokens = self._discover_context(entries, props)
        if props:
            # llama.cpp renders tools only through a chat template that knows them (Qwen's,
            # Llama 3's…); SmolLM2's does not. Other servers say so when asked (see stream).
            self.takes_tools = "tools" in str(props.get("chat_template", ""))
        log.info("LLM %s at %s, context %d tokens", self.model, self.url, self.context_tokens)

    async def _props(self) -> dict[str, Any]:
        """llama.cpp's /props (context size, chat template), or {} if it cannot be read."""
        try:
            response = await self._client.get(self.url[: -len("/v1")] + "/props")
            props = response.json()
        except (httpx.HTTPError, ValueError):
            return {}
        return props if isinstance(props, dict) else {}

    def _discover_context(self, entries: list[dict[str, Any]], props: dict[str, Any]) -> int:
        entry = next(e for e in entries if e["id"] == self.model)
        if isinstance(entry.get("max_model_len"), int):  # vLLM
            return int(entry["max_model_len"])
        try:  # llama.cpp's server: per-slot context in /props
            return int(props["default_generation_settings"]["n_ctx"])
        except (KeyError, TypeError, ValueError):
            return DEFAULT_CONTEXT

    def _raise_for_status(self, status: int, body: str) -> None:
        message = _error_message(body)
        lowered = message.lower()
        if status in (400, 413) and any(word in lowered for word in _CONTEXT_WORDS):
            raise LLMContextOverflowError(f"The conversation is longer than the model's context ({message}).")
        if status == 404 and "model" in lowered:
            raise LLMModelNotServedError(
                f"Model {self.model!r} is not served at {self.url} ({message}). "
                + (f"It serves: {', '.join(self.served)}." if self.served else "")
            )
        hint = " The server is starting or overloaded: try again shortly." if status in (429, 503) else ""
        raise LLMServerError(f"The LLM server at {self.url} answered HTTP {status}: {message}.{hint}")

    async def stream(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        calls: list[ToolCall] | None = None,
    ) -> AsyncIterator[str]:
        payload = {
            **self._extra,
            "model": self.model,
            "messages": messages,
            "stream": True,
            "max_tokens": self.settings.max_tokens,
            "temperature": self.settings.temperature,
        }
        if tools:
            payload["tools"] = tools
        building = _CallBuilder()
        waited = 0.0
        try:
            while True:
                async with self._client.stream(
                    "POST", self.url + "/chat/completions", json=payload
                ) as response:
                    if response.status_code in (429, 503) and waited < self.settings.busy_wait_s:
                        # Starting up or overloaded: say so, wait a little, ask again.
                        body = (await response.aread()).decode("utf-8", "replace")
                        if not waited:
                            self.notice(
                                f"The LLM server at {self.url} is busy (HTTP {response.status_code}: "
                                f"{_error_message(body)}); waiting up to {self.settings.busy_wait_s:g} s…"
                            )
                        pause = min(2.0, 0.25 * 2 ** int(waited))
                        await asyncio.sleep(pause)
                        waited += pause
                        continue
                    if tools and response.status_code == 400:
                        body = (await response.aread()).decode("utf-8", "replace")
                        if "tool" not in body.lower():
                            self._raise_for_status(400, body)
                        # vLLM without --enable-auto-tool-choice: answer without tools from now on.
                        self.takes_tools = False
                        self.notice(
                            f"The LLM server at {self.url} does not take tools ({_error_message(body)}); "
                            "answering without them. For vLLM, start it with --enable-auto-tool-choice "
                            "--tool-call-parser hermes (voxloop llm deploy profiles do)."
                        )
                        payload.pop("tools")
                        tools = None
                        continue
                    async for piece in self._read(response, building):
                        yield piece
                    if calls is not None:
                        calls.extend(building.calls())
                    return
        except httpx.HTTPError as exc:
            raise self._unavailable(exc) from None

    async def prefill(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> None:
        # One token, greedy: the server evaluates the whole prompt and keeps it in its cache
        # (llama.cpp's per-slot cache, vLLM's prefix cache); the next request with the same
        # beginning only evaluates what is new.
        payload = {
            **self._extra,
            "model": self.model,
            "messages": messages,
            "max_tokens": 1,
            "temperature": 0.0,
        }
        if tools and self.takes_tools:  # the same prompt as the reply's: the tools are in it
            payload["tools"] = tools
        try:
            response = await self._client.post(self.url + "/chat/completions", json=payload)
            log.debug("prefill: HTTP %d", response.status_code)
        except httpx.HTTPError as exc:
            log.debug("prefill failed: %s", exc)

    async def _read(self, response: httpx.Response, building: _CallBuilder) -> AsyncIterator[str]:
        """The reply in a response: streamed events, one JSON completion, or an error."""
        if response.status_code >= 400:
            body = (await response.aread()).decode("utf-8", "replace")
            self._raise_for_status(response.status_code, body)
        ctype = response.headers.get("content-type", "")
        if "text/event-stream" not in ctype:
            body = (await response.aread()).decode("utf-8", "replace")
            yield self._whole_reply(body, building)
            return
        # Events as the SSE spec reads them (httpx-sse): a multi-line ``data:`` is one event.
        async for event in EventSource(response).aiter_sse():
            piece = self._parse_data(event.data, building)
            if piece is None:
                return
            if piece:
                yield piece
        # Every OpenAI-compatible server ends a stream with [DONE]; a body that stops before it
        # was cut off (server killed, network lost).
        raise LLMUnavailableError(
            f"The connection to the LLM server at {self.url} was lost mid-reply. "
            "Check that the server is still running."
        )

    def _parse_data(self, data: str, building: _CallBuilder) -> str | None:
        """One SSE event's data -> text ('' for empty and role-only chunks), None at [DONE]."""
        data = data.strip()
        if not data:
            return ""
        if data == "[DONE]":
            return None
        try:
            chunk = json.loads(data)
        except ValueError:
            raise LLMProtocolError(
                f"The server at {self.url} streamed something that is not JSON ({_snippet(data)!r})."
            ) from None
        if isinstance(chunk, dict) and "error" in chunk:
            raise LLMServerError(f"The LLM server at {self.url} failed mid-reply: {_error_message(data)}.")
        try:
            delta = chunk["choices"][0].get("delta") or {}
            if delta.get("tool_calls"):
                building.add(delta["tool_calls"], self.url)
            return str(delta.get("content") or "")
        except (KeyError, IndexError, TypeError, AttributeError):
            if isinstance(chunk, dict) and chunk.get("choices") == []:
                return ""  # usage-only chunk
            raise LLMProtocolError(
                f"The server at {self.url} streamed a chunk without choices ({_snippet(data)!r})."
            ) from None

    def _whole_reply(self, body: str, building: _CallBuilder) -> str:
        """Servers that ignore ``stream`` answer with one JSON completion."""
        try:
            data = json.loads(body)
            message = data["choices"][0]["message"]
            if message.get("tool_calls"):
                building.add([{"index": i, **c} for i, c in enumerate(message["tool_calls"])], self.url)
            return str(message["content"] or "")
        except (ValueError, KeyError, IndexError, TypeError):
            raise LLMProtocolError(
                f"The server at {self.url} did not answer with OpenAI-style JSON "
                f"(got {_snippet(body)!r}). Check that --llm-url points at an OpenAI-compatible /v1."
            ) from None

    async def aclose(self) -> None:
        await self._client.aclose()
