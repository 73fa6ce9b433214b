"""`voxloop bench --load 1,2,4,8`: N simulated conversations at once against one LLM server.

Each conversation sends a turn (system prompt, a little history, a new question), streams the
reply, and measures time to first token; as soon as its reply ends it sends the next turn, so
the server always has N requests in flight. Continuous batching (vLLM) keeps time to first token
flat as N grows; a server that serves requests one at a time makes it grow with N.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from voxloop.bench import percentile, rows_table
from voxloop.errors import LLMError
from voxloop.llm.openai_http import OpenAIChat
from voxloop.settings import LlmSettings

QUESTIONS = [
    "What is the capital of France?",
    "Can you set a timer for ten minutes?",
    "Tell me a fun fact about cats.",
    "What should I cook for dinner tonight?",
    "How far away is the moon?",
    "What is a good name for a dog?",
]


async def _conversation(
    chat: OpenAIChat, index: int, turns: int, ttfts: list[float], errors: list[str]
) -> None:
    messages = [{"role": "system", "content": "You are a concise voice assistant. Answer in one sentence."}]
    for turn in range(turns):
        messages.append({"role": "user", "content": QUESTIONS[(index + turn) % len(QUESTIONS)]})
        started = time.perf_counter()
        first = None
        reply = []
        try:
            async for piece in chat.stream(messages):
                if first is None:
                    first = time.perf_counter() - started
                reply.append(piece)
        except LLMError as exc:
            errors.append(str(exc))
            continue
        if first is not None:
            ttfts.append(first * 1000)
        messages.append({"role": "assistant", "content": "".join(reply)})


async def load_point(url: str, settings: LlmSettings, sessions: int, turns: int) -> dict[str, Any]:
    chat = OpenAIChat(url, settings)
    await chat.connect()
    ttfts: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()
    try:
        await asyncio.gather(*(_conversation(chat, i, turns, ttfts, errors) for i in range(sessions)))
    finally:
        await chat.aclose()
    return {
        "url": url,
        "model": chat.model,
        "sessions": sessions,
        "requests": len(ttfts) + len(errors),
        "ttft_p50_ms": percentile(ttfts, 0.5),
        "ttft_p95_ms": percentile(ttfts, 0.95),
        "errors": len(errors),
        "wall_s": time.perf_counter() - started,
    }


def run_load(
    urls: list[str], settings: LlmSettings, levels: list[int], turns: int = 4
) -> list[dict[str, Any]]:
    # Short replies keep the run short; the first token is what a listener waits for.
    capped = dataclasses.replace(settings, max_tokens=min(settings.max_tokens, 64))

    async def run() -> list[dict[str, Any]]:
        rows = []
        for url in urls:
            await load_point(url, capped, 1, 1)  # warm the server up
            for n in levels:
                rows.append(await load_point(url, capped, n, turns))
        return rows

    return asyncio.run(run())


def load_table(rows: list[dict[str, Any]]) -> str:
    columns = [
        ("server", "url", ""),
        ("model", "model", ".28s"),
        ("N", "sessions", "d"),
        ("TTFT p50 ms", "ttft_p50_ms", ".0f"),
        ("TTFT p95 ms", "ttft_p95_ms", ".0f"),
        ("requests", "requests", "d"),
        ("errors", "errors", "d"),
    ]
    return rows_table(rows, columns)
