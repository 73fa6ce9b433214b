"""The reference GPU deployment as configuration: what can be checked without a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from voxloop.errors import ConfigError
from voxloop.llm.deploy import (
    PROFILES,
    REFERENCE_GPU_FLAGS,
    docker_run,
    download_command,
    profile,
    serve_args,
)

COMPOSE = Path(__file__).resolve().parents[1] / "deploy" / "compose.yaml"


def _has_flags(command: list[str], flags: tuple[str, ...]) -> bool:
    pairs = list(zip(flags[::2], flags[1::2], strict=True))
    return all(command[command.index(flag) + 1] == value for flag, value in pairs if flag in command) and all(
        flag in command for flag, _ in pairs
    )


def test_compose_parses_and_serves_the_reference_profiles():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    for name in ("mistral-7b", "llama3-70b"):
        service = services[name]
        assert service["image"] == "nvcr.io/nvidia/vllm:25.11-py3"
        assert service["ipc"] == "host"
        assert any(v.endswith(":/models") for v in service["volumes"])
        assert service["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
        # The same command line voxloop builds for this profile.
        assert service["command"] == ["vllm", "serve", *serve_args(PROFILES[name], host="0.0.0.0", port=8000)]
    assert _has_flags(services["mistral-7b-dp"]["command"], REFERENCE_GPU_FLAGS)
    assert "--data-parallel-size" in services["mistral-7b-dp"]["command"]
    assert services["download-mistral-7b"]["command"] == download_command(PROFILES["mistral-7b"])
    assert services["download-llama3-70b"]["command"] == download_command(PROFILES["llama3-70b"])
    assert "vllm-router" in services["router"]["command"]


@pytest.mark.parametrize("name", ["mistral-7b", "llama3-70b"])
def test_gpu_profiles_carry_the_reference_flags(name):
    args = serve_args(profile(name))
    assert _has_flags(args, REFERENCE_GPU_FLAGS)
    assert args[args.index("--host") + 1] == "127.0.0.1"  # loopback unless asked otherwise
    run = docker_run(profile(name))
    assert "--ipc=host" in run and "--gpus" in run and run[run.index("--gpus") + 1] == "all"
    assert _has_flags(run, REFERENCE_GPU_FLAGS)
    if name == "llama3-70b":
        assert args[args.index("--tensor-parallel-size") + 1] == "4"
    # voxloop's tools: vLLM parses the model's calls only when told to.
    parser = {"mistral-7b": "mistral", "llama3-70b": "llama3_json"}[name]
    assert "--enable-auto-tool-choice" in args and args[args.index("--tool-call-parser") + 1] == parser


def test_cpu_profile_is_what_ci_runs():
    args = serve_args(profile("smollm2-cpu"), model_dir="/tmp/m")
    assert args[:1] == ["/tmp/m"] and "--enforce-eager" in args and "--quantization" not in args
    assert PROFILES["smollm2-cpu"].env == {"VLLM_CPU_KVCACHE_SPACE": "1"}


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ConfigError, match="mistral-7b"):
        profile("gpt-5")
