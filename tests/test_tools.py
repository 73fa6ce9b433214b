"""Voice actions: tool calling with the clock, the calculator and timers.

Fast tests of each seam (the schema made from a signature, the calculator, the toolbox's
failures, streamed tool-call deltas, a reply with a tool call on a scripted model), then the
real thing: spoken questions through the real pipeline and the embedded llama.cpp.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Literal

import httpx
import numpy as np
import pytest

from conftest import ROOT
from kit import ScriptedChat, Voice, Words
from voxloop.audio import save_wav
from voxloop.audio.decode import load_audio
from voxloop.conversation import Conversation
from voxloop.events import Event, ReplyDelta, SpeechEnded, ToolUsed
from voxloop.llm import Message
from voxloop.llm.openai_http import OpenAIChat
from voxloop.reply import Models, ReplyJob
from voxloop.settings import LlmSettings, ToolSettings
from voxloop.tools import Toolbox, ToolCall, ToolFailure, tool
from voxloop.tools.builtin import calculate, evaluate, get_time
from voxloop.tools.intents import heard_intent
from voxloop.tools.offer import conversation_toolbox
from voxloop.tools.timers import Timers, duration


# -- a tool from a typed function -------------------------------------------------------------
def test_a_typed_function_becomes_a_json_schema():
    @tool(doing="turn on the lights")
    def lights(room: Literal["kitchen", "hall"], level: int = 100, dim: bool = False) -> str:
        """Turn on the lights in a room.

        Args:
            room: which room
            level: brightness in percent
        """
        return f"{room} {level}"

    schema = lights.schema()["function"]
    assert schema["name"] == "lights" and schema["description"] == "Turn on the lights in a room."
    assert schema["parameters"] == {
        "type": "object",
        "properties": {
            "room": {"type": "string", "enum": ["kitchen", "hall"], "description": "which room"},
            "level": {"type": "integer", "description": "brightness in percent"},
            "dim": {"type": "boolean"},
        },
        "required": ["room"],
    }
    with pytest.raises(TypeError, match="docstring"):
        tool(lambda x: x)
    with pytest.raises(TypeError, match="type annotation"):

        @tool
        def untyped(x):  # type: ignore[no-untyped-def]
            """Something."""


# -- the calculator does not trust the model's arithmetic -------------------------------------
@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("37 * 43", 1591),
        ("seven apples", None),
        ("7 plus 5", 12),
        ("20 minus 8", 12),
        ("(20 - 8) / 4", 3),
        ("1,234 x 2", 2468),
        ("2 ** 10", 1024),
        ("2^10", 1024),
        ("sqrt(2)", 1.414213562),
        ("10 / 3", 3.333333333),
        ("15 percent of 80", 12),
        ("twenty-one divided by seven", 3),
        ("one hundred and twenty three times two", 246),
    ],
)
def test_the_calculator_works_sums_out_exactly(expression, value):
    if value is None:
        with pytest.raises(ValueError, match="not a sum"):
            evaluate(expression)
    else:
        assert evaluate(expression) == value


@pytest.mark.parametrize(
    ("expression", "why"),
    [
        ("1 / 0", "divides by zero"),
        ("9 ** 9 ** 9", "too large"),
        ("__import__('os').system('true')", "not a sum"),
        ("open('x')", "not a sum"),
        ("(1).__class__", "not a sum"),
        ("10 ** 999", "too long"),
    ],
)
def test_the_calculator_refuses_what_is_not_arithmetic(expression, why):
    with pytest.raises(ValueError, match=why):
        evaluate(expression)


async def test_a_failing_call_is_a_sentence_to_say_never_a_crash():
    box = Toolbox.of([calculate, get_time], timeout_s=0.5)
    assert json.loads(await box.run(ToolCall("1", "calculate", '{"expression": "37*43"}')))["result"] == 1591
    cases = {
        ToolCall(
            "2", "calculate", '{"expression": "1/0"}'
        ): "Sorry, I could not work that out: it divides by zero.",
        ToolCall(
            "3", "calculate", "{not json"
        ): "Sorry, I could not work that out: I got its details garbled.",
        ToolCall(
            "4", "calculate", '{"formula": "1+1"}'
        ): "Sorry, I could not work that out: I got its details wrong.",
        ToolCall("5", "launch_rockets", "{}"): "Sorry, I tried to use a tool I don't have.",
    }
    for call, said in cases.items():
        with pytest.raises(ToolFailure) as failure:
            await box.run(call)
        assert failure.value.spoken == said

    @tool(doing="ask the slow service")
    async def slow() -> str:
        """Never answers in time."""
        await asyncio.sleep(5)
        return "late"

    box = Toolbox.of([slow], timeout_s=0.2)
    with pytest.raises(ToolFailure, match="timed out") as failure:
        await box.run(ToolCall("6", "slow", ""))
    assert failure.value.spoken == "Sorry, I could not ask the slow service: it took too long."


def test_the_clock_tells_the_local_time():
    now = datetime.now().astimezone()
    told = get_time.function()
    assert told["time_24h"][:2] == now.strftime("%H") and str(now.year) in told["date"]
    assert now.strftime("%A") in told["date"]


# -- timers --------------------------------------------------------------------------------------
async def test_a_timer_rings_once_and_can_be_listed_and_cancelled():
    rung: list[tuple[float, str]] = []
    timers = Timers(lambda text: rung.append((asyncio.get_running_loop().time(), text)))
    box = Toolbox.of(timers.tools())
    t0 = asyncio.get_running_loop().time()
    await box.run(ToolCall("1", "set_timer", '{"seconds": 1}'))
    await box.run(ToolCall("2", "set_timer", '{"minutes": 5, "label": "tea"}'))
    listed = json.loads(await box.run(ToolCall("3", "list_timers", "{}")))["timers"]
    assert [t["name"] for t in listed] == ["1 second timer", "tea timer"]
    with pytest.raises(ToolFailure, match="2 timers"):
        await box.run(ToolCall("4", "cancel_timer", "{}"))
    await asyncio.sleep(1.2)
    assert len(rung) == 1 and 0.95 <= rung[0][0] - t0 <= 1.15, rung
    assert rung[0][1] == "Your 1 second timer is done."
    assert json.loads(await box.run(ToolCall("5", "cancel_timer", '{"label": "tea"}'))) == {
        "cancelled": "tea timer"
    }
    assert not timers.running
    with pytest.raises(ToolFailure, match="no such timer"):
        await box.run(ToolCall("6", "cancel_timer", '{"label": "eggs"}'))
    with pytest.raises(ToolFailure, match="between one second and one day"):
        await box.run(ToolCall("7", "set_timer", '{"hours": 48}'))
    await box.run(ToolCall("8", "set_timer", '{"seconds": 60}'))
    assert await timers.aclose() == ["1 minute timer"]
    assert len(rung) == 1


def test_durations_read_as_people_say_them():
    assert duration(3) == "3 seconds"
    assert duration(60) == "1 minute"
    assert duration(5400) == "1 hour 30 minutes"


# -- which tools a conversation gets ------------------------------------------------------------
class _Model:
    model = "m"

    def __init__(self, takes_tools: bool) -> None:
        self.takes_tools = takes_tools


def test_tools_follow_the_settings_and_the_model():
    timers = Timers(lambda _: None)
    every = {"get_time", "calculate", "set_timer", "list_timers", "cancel_timer"}

    def box(settings: ToolSettings, takes_tools: bool = True, embedded: bool = False) -> Toolbox:
        return conversation_toolbox(settings, _Model(takes_tools), timers, embedded)  # type: ignore[arg-type]

    assert set(box(ToolSettings()).tools) == every and box(ToolSettings()).for_model
    assert box(ToolSettings(), embedded=True) and not box(ToolSettings(), embedded=True).for_model
    assert not box(ToolSettings(), takes_tools=False).for_model
    assert box(ToolSettings(model_calls="on"), takes_tools=False, embedded=True).for_model
    assert not box(ToolSettings(model_calls="off")).for_model
    assert not box(ToolSettings(enabled=False))
    assert set(box(ToolSettings(allow=("calculate",))).tools) == {"calculate"}


# -- requests heard in the words --------------------------------------------------------------
@pytest.mark.parametrize(
    ("said", "tool", "arguments"),
    [
        ("What time is it?", "get_time", {}),
        ("Hey, what's the time?", "get_time", {}),
        ("What day is it today?", "get_time", {}),
        ("What is 37 times 43?", "calculate", {"expression": "37 times 43"}),
        ("What is seven plus five?", "calculate", {"expression": "seven plus five"}),
        ("How much is 1,250 divided by 5?", "calculate", {"expression": "1,250 divided by 5"}),
        ("What is 5 divided by 0?", "calculate", {"expression": "5 divided by 0"}),
        ("Set a timer for 3 seconds.", "set_timer", {"seconds": 3, "label": ""}),
        ("Please set a tea timer for five minutes.", "set_timer", {"seconds": 300, "label": "tea"}),
        ("Start a 10 minute timer.", "set_timer", {"seconds": 600, "label": ""}),
        ("Set a timer for 1 hour and 30 minutes", "set_timer", {"seconds": 5400, "label": ""}),
        ("Set a timer for half an hour.", "set_timer", {"seconds": 1800, "label": ""}),
        ("Cancel the tea timer.", "cancel_timer", {"label": "tea"}),
        ("Stop the timer", "cancel_timer", {"label": ""}),
        ("How much time is left?", "list_timers", {}),
    ],
)
def test_plain_requests_are_heard_in_the_words(said, tool, arguments):
    intent = heard_intent(said, EVERY_TOOL)
    assert intent is not None and intent.call.name == tool
    assert json.loads(intent.call.arguments) == arguments


@pytest.mark.parametrize(
    "said",
    [
        "What is the capital of France?",
        "What is the time difference between Paris and Tokyo?",
        "What is 3 times the speed of light?",
        "Time flies like an arrow.",
        "Set the table for 3 people.",
        "What is a timer?",
        "",
    ],
)
def test_anything_else_goes_to_the_model(said):
    assert heard_intent(said, EVERY_TOOL) is None


def test_a_request_for_a_tool_that_is_not_offered_goes_to_the_model():
    assert heard_intent("What time is it?", {"calculate"}) is None


EVERY_TOOL = {"get_time", "calculate", "set_timer", "list_timers", "cancel_timer"}


# -- tool calls as servers stream them ------------------------------------------------------------
def _sse(*chunks: dict[str, Any]) -> bytes:
    lines = ["data: " + json.dumps({"choices": [{"delta": c, "index": 0}]}) for c in chunks]
    return ("\n\n".join([*lines, "data: [DONE]"]) + "\n\n").encode()


async def test_streamed_tool_call_deltas_are_joined_into_whole_calls():
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        body = _sse(
            {"role": "assistant", "content": None},
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "calculate", "arguments": ""},
                    }
                ]
            },
            {"tool_calls": [{"index": 0, "function": {"arguments": '{"expression": '}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": '"37*43"}'}}]},
            {"tool_calls": [{"index": 1, "id": "c2", "function": {"name": "get_time", "arguments": "{}"}}]},
        )
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    chat = OpenAIChat("127.0.0.1:9/v1/", LlmSettings(), transport=httpx.MockTransport(handler))
    calls: list[ToolCall] = []
    text = [
        p
        async for p in chat.stream(
            [{"role": "user", "content": "hi"}], tools=[calculate.schema()], calls=calls
        )
    ]
    assert "".join(text) == ""
    assert calls == [ToolCall("c1", "calculate", '{"expression": "37*43"}'), ToolCall("c2", "get_time", "{}")]
    assert seen[0]["tools"][0]["function"]["name"] == "calculate"


async def test_a_server_that_does_not_take_tools_is_asked_again_without_them():
    notices: list[str] = []
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        if "tools" in body:  # vLLM without --enable-auto-tool-choice
            message = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
            return httpx.Response(400, json={"error": {"message": message}})
        return httpx.Response(
            200, content=_sse({"content": "Hello."}), headers={"content-type": "text/event-stream"}
        )

    chat = OpenAIChat(
        "127.0.0.1:9/v1/", LlmSettings(), transport=httpx.MockTransport(handler), notice=notices.append
    )
    text = [
        p
        async for p in chat.stream([{"role": "user", "content": "hi"}], tools=[calculate.schema()], calls=[])
    ]
    assert text == ["Hello."] and not chat.takes_tools
    assert len(bodies) == 2 and "tools" not in bodies[1]
    assert len(notices) == 1 and "--enable-auto-tool-choice" in notices[0]


# -- a reply with a tool call, on a scripted model -----------------------------------------------
def calculator_chat(expression: str) -> ScriptedChat:
    """Calls ``calculate`` on ``expression`` when offered tools, answers from the tool's result
    on the next request, and from its own knowledge when offered none."""

    def reply(
        messages: list[Message], tools: list[dict[str, Any]] | None, calls: list[ToolCall] | None
    ) -> list[str]:
        if messages[-1]["role"] == "tool":
            result = json.loads(messages[-1]["content"])["result"]
            return [f"That makes {result}."]
        if not tools:
            return ["Roughly sixteen hundred."]
        assert calls is not None
        calls.append(ToolCall("c1", "calculate", json.dumps({"expression": expression})))
        return []

    return ScriptedChat(reply, takes_tools=True)


async def _reply(
    chat: ScriptedChat, toolbox: Toolbox, said: str = "Multiply thirty seven by forty three for me."
) -> tuple[ReplyJob, list[Event]]:
    from voxloop.audio.sink import NullSink

    events: list[Event] = []
    pool = ThreadPoolExecutor(1)
    models = Models(Words(said), chat, Voice(16000), NullSink(), pool, pool)
    speech = SpeechEnded(np.zeros(16000, np.float32), 0.0, 1.0, 1.4)
    job = ReplyJob(
        models,
        Conversation("S"),
        LlmSettings(),
        speech,
        events.append,
        toolbox=toolbox,
        filler="Let me check.",
    )
    job.commit()
    await job.finish()
    pool.shutdown()
    return job, events


async def test_a_tool_call_is_answered_from_its_result_after_a_filler():
    chat = calculator_chat("37 * 43")
    job, events = await _reply(chat, Toolbox.of([calculate]))
    assert job.result.sentences == ["Let me check.", "That makes 1591."]
    used = [e for e in events if isinstance(e, ToolUsed)]
    assert [(u.name, u.error) for u in used] == [("calculate", None)]
    asked = chat.requests[1]
    assert asked[-2]["tool_calls"][0]["function"]["name"] == "calculate"
    assert asked[-1] == {
        "role": "tool",
        "tool_call_id": "c1",
        "content": '{"expression": "37 * 43", "result": 1591}',
    }
    assert "".join(e.text for e in events if isinstance(e, ReplyDelta)).startswith(
        "Let me check. That makes 1591."
    )


async def test_a_tool_that_fails_is_a_spoken_apology_and_the_reply_ends():
    chat = calculator_chat("1 / 0")
    job, events = await _reply(chat, Toolbox.of([calculate]))
    assert job.result.sentences == ["Let me check.", "Sorry, I could not work that out: it divides by zero."]
    assert job.result.error is None and len(chat.requests) == 1
    assert [e.error for e in events if isinstance(e, ToolUsed)] == [
        "calculate raised ValueError: it divides by zero"
    ]


# -- plugins: entry points, and MCP servers over stdio --------------------------------------------
PLUGIN = '''
from voxloop.tools import tool


@tool(doing="water the plants")
def water_plants(minutes: int) -> str:
    """Water the garden for some minutes."""
    if minutes > 30:
        raise RuntimeError("the tank is empty")
    return f"watering for {minutes} minutes"
'''

MCP_SERVER = '''
from mcp.server.mcpserver import MCPServer

server = MCPServer("shopping")
items = []


@server.tool()
def add_item(item: str) -> str:
    """Add an item to the shopping list."""
    items.append(item)
    return f"The list now has: {', '.join(items)}."


server.run()
'''


@pytest.fixture
def plugin_on_path(tmp_path, monkeypatch):
    """An installed plugin package: a module and its entry point in group voxloop.tools."""
    (tmp_path / "garden_tools.py").write_text(PLUGIN)
    info = tmp_path / "garden_tools-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: garden-tools\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[voxloop.tools]\ngarden = garden_tools:water_plants\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


async def test_a_plugin_is_off_until_named_then_its_calls_and_failures_work(plugin_on_path):
    from voxloop.errors import ConfigError

    timers = Timers(lambda _: None)
    assert "water_plants" not in conversation_toolbox(ToolSettings(), _Model(True), timers, False).tools  # type: ignore[arg-type]
    box = conversation_toolbox(ToolSettings(plugins=("garden",)), _Model(True), timers, False)  # type: ignore[arg-type]
    assert box.tools["water_plants"].acts
    assert await box.run(ToolCall("1", "water_plants", '{"minutes": 5}')) == "watering for 5 minutes"
    with pytest.raises(ToolFailure) as failure:
        await box.run(ToolCall("2", "water_plants", '{"minutes": 50}'))
    assert failure.value.spoken == "Sorry, I could not water the plants: the tank is empty."
    with pytest.raises(ConfigError, match=r"No tool plugin named .lawn.*installed: garden"):
        conversation_toolbox(ToolSettings(plugins=("lawn",)), _Model(True), timers, False)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"Unknown tool.*calculater"):
        conversation_toolbox(ToolSettings(allow=("calculater",)), _Model(True), timers, False)  # type: ignore[arg-type]


async def test_an_mcp_server_started_over_stdio_is_listed_and_called(tmp_path):
    import sys

    from voxloop.tools.mcp_stdio import McpServers

    script = tmp_path / "shopping.py"
    script.write_text(MCP_SERVER)
    async with McpServers((f"shopping={sys.executable} {script}", "broken=/nonexistent/server")) as servers:
        box = Toolbox.of(servers.tools)
        assert list(box.tools) == ["add_item"]
        assert box.tools["add_item"].acts and "shopping list" in box.tools["add_item"].description
        assert await box.run(ToolCall("1", "add_item", '{"item": "milk"}')) == "The list now has: milk."
        assert await box.run(ToolCall("2", "add_item", '{"item": "eggs"}')) == "The list now has: milk, eggs."
        with pytest.raises(ToolFailure, match="add_item"):
            await box.run(ToolCall("3", "add_item", '{"thing": 1}'))


async def test_a_plain_request_is_answered_from_the_words_without_the_model():
    chat = calculator_chat("unused")
    job, events = await _reply(chat, Toolbox.of([calculate], for_model=False), said="What is 37 times 43?")
    assert job.result.sentences == ["37 times 43 is 1591."] and chat.requests == []
    assert [(e.name, e.result) for e in events if isinstance(e, ToolUsed)] == [
        ("calculate", '{"expression": "37 times 43", "result": 1591}')
    ]
    job, _ = await _reply(chat, Toolbox.of([calculate], for_model=False), said="What is 5 divided by 0?")
    assert job.result.sentences == ["Sorry, I could not work that out: it divides by zero."]
    # Not offered to the model: a question the words do not settle is a plain request.
    job, _ = await _reply(chat, Toolbox.of([calculate], for_model=False))
    assert job.result.sentences == ["Roughly sixteen hundred."]


# -- the real thing: spoken requests through the real pipeline -------------------------------------
def test_spoken_requests_for_the_clock_and_sums_are_answered_right(speech, voxloop, transcriber, tmp_path):
    wav = speech(
        [
            "What time is it?",
            "What is 37 times 43?",
            "What is five divided by zero?",
            "What is the capital of France?",
        ],
        name="tools.wav",
        turn_gap_s=7.0,
    )
    before = datetime.now().astimezone()
    run = voxloop("chat", "--input", str(wav), "--no-speak", "--json", "--output-dir", str(tmp_path / "out"))
    after = datetime.now().astimezone()
    assert run.code == 0, run.err
    events = [json.loads(line) for line in run.out.splitlines()]
    done = [e for e in events if e["type"] == "turn_done"]
    assert [e["name"] for e in events if e["type"] == "tool"] == ["get_time", "calculate", "calculate"], done
    assert len(done) == 4, done
    clock = {f"{t.hour % 12 or 12}:{t.minute:02d}" for t in (before, after)}
    assert any(c in done[0]["assistant"] for c in clock), (clock, done[0])
    assert "1591" in done[1]["assistant"]
    # What the user hears: the reply's audio says the product.
    heard = transcriber.transcribe(load_audio(done[1]["reply_audio"]))
    assert "1591" in heard.replace(",", ""), heard
    assert done[2]["assistant"] == "Sorry, I could not work that out: it divides by zero."
    # The turn after the failed sum is answered by the model as usual.
    assert (
        done[3]["assistant"]
        and done[3]["error"] is None
        and "Paris" in done[3]["user"] + done[3]["assistant"]
    )


def test_a_timer_set_by_voice_rings_about_when_asked(speech, voxloop_env, tmp_path):
    wav = tmp_path / "timer.wav"
    asked = load_audio(speech(["Set a timer for three seconds."], name="timer-ask.wav"))
    save_wav(wav, np.concatenate([asked, np.zeros(16000 * 7, np.float32)]), 16000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxloop", "chat", "--input", str(wav), "--realtime", "--no-speak", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=voxloop_env, cwd=ROOT,
    )  # fmt: skip
    stamped: list[tuple[float, dict[str, Any]]] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        stamped.append((time.monotonic(), json.loads(line)))
    assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    set_at = next(t for t, e in stamped if e["type"] == "tool" and e["name"] == "set_timer")
    rang = [(t, e["text"]) for t, e in stamped if e["type"] == "notice"]
    assert [text for _, text in rang] == ["Your 3 second timer is done."], stamped
    assert 2.5 <= rang[0][0] - set_at <= 4.5
    said = [e["assistant"] for _, e in stamped if e["type"] == "turn_done"]
    assert said == ["Okay, 3 second timer started."]
