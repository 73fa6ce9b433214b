"""Answer accuracy of the embedded model, as text, on questions never used to tune voxloop.

`voxloop bench --quality` plays spoken questions through the whole pipeline; this asks an LLM
server the same kind of questions as text, so a model, a quantization or a system prompt can be
compared in a minute, with the ears left out. Four groups, scored like the bench (keywords):
- dev: the 48 questions of benchmarks/quality, one at a time;
- mem: its 8 three-turn conversations (the scored turns);
- noisy: what Whisper tiny.en really heard in a spoken run ("How many links does a dog have?"),
  scored against the meant question's answer;
- held: 48 more simple questions, written apart and never used to tune prompts or settings.

Start a server with the settings under test, then run from the repository root::

    voxloop llm start --llm-preset base --port 8790
    python benchmarks/quality_text.py http://127.0.0.1:8790 [PROMPT.txt ...]

Without a prompt file it uses voxloop's default system prompt. The request is the one voxloop
sends to llama.cpp (greedy, 96 tokens, its repetition controls).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
import make_quality_set as m

from voxloop.bench.score import holds_answer
from voxloop.settings import DEFAULT_SYSTEM_PROMPT
from voxloop.tts.sentences import SentenceSplitter

BODY = {
    "temperature": 0.0,
    "max_tokens": 96,
    "repeat_penalty": 1.1,
    "repeat_last_n": 128,
    "dry_multiplier": 0.8,
    "dry_allowed_length": 3,
}
# held out: never used to tune
HELD = [
    ("What is the capital of Italy?", [["rome"]]),
    ("How many wheels does a bicycle have?", [["2"]]),
    ("What is the freezing point of water in Celsius?", [["0"]]),
    ("Who discovered penicillin?", [["fleming"]]),
    ("What is the boiling point of water in Celsius?", [["100"]]),
    ("How many legs does an insect have?", [["6"]]),
    ("What is the largest animal on Earth?", [["blue whale", "whale"]]),
    ("How many planets are in our solar system?", [["8"]]),
    ("What is the capital of Canada?", [["ottawa"]]),
    ("What is the chemical symbol for water?", [["h2o"]]),
    ("What is eight times seven?", [["56"]]),
    ("What is fifteen minus nine?", [["6"]]),
    ("How many days are in a week?", [["7"]]),
    ("How many weeks are in a year?", [["52"]]),
    ("What is the opposite of up?", [["down"]]),
    ("What is the plural of foot?", [["feet"]]),
    ("What is the past tense of eat?", [["ate"]]),
    ("What do caterpillars turn into?", [["butterfl", "moth"]]),
    ("What is the closest star to Earth?", [["sun"]]),
    ("Who wrote Hamlet?", [["shakespeare"]]),
    ("What color is a banana when it is ripe?", [["yellow"]]),
    ("What is the capital of England?", [["london"]]),
    ("How many sides does a square have?", [["4"]]),
    ("What is the main language spoken in Brazil?", [["portuguese"]]),
    ("What do cows drink?", [["water"]]),
    ("Which animal has a long trunk?", [["elephant"]]),
    ("What is the fastest land animal?", [["cheetah"]]),
    ("How many strings does a standard guitar have?", [["6"]]),
    ("What is the French word for thank you?", [["merci"]]),
    ("What is frozen water called?", [["ice"]]),
    ("What is the longest river in Africa?", [["nile"]]),
    ("What planet do we live on?", [["earth"]]),
    ("What is a baby dog called?", [["pupp"]]),
    ("How many hours are in two days?", [["48"]]),
    ("What is the opposite of fast?", [["slow"]]),
    ("What is the capital of Australia?", [["canberra"]]),
    ("Which organ pumps blood through the body?", [["heart"]]),
    ("What do pandas mostly eat?", [["bamboo"]]),
    ("How can I stop hiccups?", m.any_of("water, breath, hold, sugar, swallow, drink")),
    ("What should I do if I cut my finger?", m.any_of("wash, clean, pressure, bandage, water, plaster")),
    (
        "How do I make my phone battery last longer?",
        m.any_of("bright, screen, background, app, power, sav, wifi, bluetooth, location, low"),
    ),
    (
        "What is a good way to remember a shopping list?",
        m.any_of("write, note, phone, app, list, group, categor"),
    ),
    ("What is the square root of sixty-four?", [["8"]]),
    ("How many zeros are in one million?", [["6"]]),
    ("What is the largest country in the world by area?", [["russia"]]),
    ("Which bird is a symbol of peace?", [["dove"]]),
    ("What is the color of grass?", [["green"]]),
    ("How many bones does an adult human have?", [["206"]]),
]
# what tiny.en really heard in the last spoken run (answer = the meant question's)
NOISY = [
    ("How many links does a dog have?", [["4"]]),
    (
        "How do I get a coffee stay out in my shirt?",
        m.any_of("water, soap, detergent, vinegar, baking soda, stain remover, blot, rins, soak, wash"),
    ),
    ("What color do you get? I'm mixing blue and yellow.", [["green"]]),
    ("How many days are an leap year?", [["366"]]),
    ("What is the opposite on the early?", [["late"]]),
    ("How many hours are we in the day?", [["24"]]),
    ("What is the opposite uncold?", [["hot", "warm"]]),
    (
        "How can I keep redfish longer?",
        m.any_of("freez, airtight, bag, box, wrap, container, seal, cool, dry, fridge, refrigerat"),
    ),
    ("What do these make?", [["honey"]]),
    ("How many sites does a train will have", [["3"]]),
    ("What is turn plus turn?", [["20"]]),
    ("What is the opposite unhappy?", [["sad", "unhappy"]]),
]


Scored = tuple[bool, str, str]  # right, question, reply


# Per reply: ms to the first token, ms to the first spoken piece, streamed chunks in that piece.
FIRST: list[tuple[float, float, int]] = []


def ask(url: str, messages: list[dict[str, str]]) -> str:
    """The reply, streamed as voxloop streams it; also notes when its first spoken piece (cut
    by voxloop's SentenceSplitter) was complete, the part of first audio the LLM owns."""
    body = {"messages": messages, "stream": True, **BODY}
    splitter = SentenceSplitter()
    text, chunks, first_token, first_piece = "", 0, 0.0, 0.0
    started = time.perf_counter()
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            if not delta:
                continue
            chunks += 1
            text += delta
            first_token = first_token or (time.perf_counter() - started) * 1000
            if not first_piece and splitter.feed(delta):
                first_piece = (time.perf_counter() - started) * 1000
                FIRST.append((first_token, first_piece, chunks))
    if not first_piece and text:
        FIRST.append((first_token, (time.perf_counter() - started) * 1000, chunks))
    return text


def single(url: str, system: str, question: str, answer: m.Answer) -> Scored:
    reply = ask(url, [{"role": "system", "content": system}, {"role": "user", "content": question}])
    return holds_answer(reply, answer or []), question, reply


def conversation(url: str, system: str, turns: list[tuple[str, m.Answer]]) -> list[Scored]:
    messages = [{"role": "system", "content": system}]
    scored = []
    for question, answer in turns:
        messages.append({"role": "user", "content": question})
        reply = ask(url, messages)
        messages.append({"role": "assistant", "content": reply})
        if answer:
            scored.append((holds_answer(reply, answer), question, reply))
    return scored


def run(url: str, system: str) -> dict[str, list[Scored]]:
    return {
        "dev": [single(url, system, q, a) for _, q, a in m.QUESTIONS],
        "mem": [r for _, turns in m.MEMORY for r in conversation(url, system, turns)],
        "noisy": [single(url, system, q, a) for q, a in NOISY],
        "held": [single(url, system, q, a) for q, a in HELD],
    }


def main() -> None:
    url = sys.argv[1]
    for name in sys.argv[2:] or [""]:
        system = Path(name).read_text().strip() if name else DEFAULT_SYSTEM_PROMPT
        FIRST.clear()
        out = run(url, system)
        totals = "  ".join(f"{k} {sum(r[0] for r in v)}/{len(v)}" for k, v in out.items())
        token, piece, chunks = (statistics.median(x) for x in zip(*FIRST, strict=True))
        speed = f"first token {token:.0f} ms, first piece {piece:.0f} ms ({chunks:.0f} tokens), p50"
        print(f"== {name or 'default prompt'}: {totals}  |  {speed}", flush=True)
        for group, scored in out.items():
            for right, question, reply in scored:
                if not right:
                    print(f"   {group}: {question} -> {reply[:110]!r}")


if __name__ == "__main__":
    main()
