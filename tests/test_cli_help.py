"""`voxloop --help` states the defaults the settings really have, so the two cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from voxloop.cli import main
from voxloop.llm.deploy import DEFAULT_PROFILE
from voxloop.settings import BENCHMARKS, Settings, default_config_path
from voxloop.stt.models import ALIASES

S = Settings()


def stated_default(command: list[str], flag: str, capsys: pytest.CaptureFixture[str]) -> str:
    """The "(default X)" that ``voxloop COMMAND --help`` prints for ``flag``."""
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width
    options = text[text.index("options:") :]
    found = re.search(re.escape(flag) + r"[ ,].*?\(default ([^);]+)", options)
    assert found, f"{flag} states no default in `voxloop {' '.join(command)} --help`"
    return found.group(1)


@pytest.mark.parametrize(
    ("command", "flag", "value"),
    [
        (["chat"], "--end-silence-ms", str(S.vad.end_silence_ms)),
        (["chat"], "--max-tokens", str(S.llm.max_tokens)),
        (["chat"], "--voice", S.tts.voice),
        (["chat"], "--language", S.stt.language),
        (["chat"], "--vad", S.vad.engine),
        (["chat"], "--turn-model", "on" if S.vad.turn_model else "off"),
        (["chat"], "--tools", S.tools.model_calls),
        (["transcribe"], "--end-silence-ms", str(S.vad.end_silence_ms)),
        (["say"], "--voice", S.tts.voice),
        (["llm", "start"], "--port", str(S.llm.port)),
        (["bench"], "--beams", str(S.stt.beam_size)),
        (["wyoming"], "--language", S.stt.language),
        (["llm", "start"], "--profile", DEFAULT_PROFILE),
    ],
)
def test_help_states_the_settings_defaults(command, flag, value, capsys):
    assert stated_default(command, flag, capsys) == value


@pytest.mark.parametrize("command", [["chat"], ["wyoming"]])
def test_help_names_the_whisper_model_the_default_setting_stands_for(command, capsys):
    assert stated_default(command, "--stt-model", capsys) == ALIASES.get(S.stt.model, S.stt.model)


def test_help_names_the_config_file_and_the_bench_set_that_are_read(capsys, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", "/cfg")  # short: argparse wraps a long path
    assert stated_default(["chat"], "--config", capsys) == "/cfg/voxloop/config.toml"
    assert default_config_path() == Path("/cfg/voxloop/config.toml")
    monkeypatch.chdir(BENCHMARKS.parent)
    assert stated_default(["bench"], "--set", capsys) == "benchmarks/set"
    assert (BENCHMARKS / "set" / "manifest.json").is_file()
