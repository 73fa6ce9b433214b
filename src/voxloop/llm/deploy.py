"""vLLM deployments as data: the reference GPU setups and the CPU one CI runs.

One place builds every ``vllm serve`` command line voxloop starts or documents, so the
reference design's flags (GPTQ, 0.9 of GPU memory, 8 sequences, float16) cannot drift between
``voxloop llm start --engine vllm --profile …``, ``deploy/compose.yaml`` and the docs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from voxloop.errors import ConfigError

# The reference design's `vllm serve` flags for a GPTQ model on an NVIDIA GPU.
REFERENCE_GPU_FLAGS = (
    "--quantization", "gptq",
    "--gpu-memory-utilization", "0.9",
    "--max-num-seqs", "8",
    "--dtype", "float16",
)  # fmt: skip
IMAGE = "nvcr.io/nvidia/vllm:25.11-py3"


def tool_flags(parser: str) -> tuple[str, ...]:
    """vLLM parses a model's tool calls only when told how (voxloop's clock, calculator and
    timers); without these it answers HTTP 400 to any request with tools, and voxloop goes on
    without them."""
    return ("--enable-auto-tool-choice", "--tool-call-parser", parser)


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    model_dir: str  # where the weights are, inside the container (or on this machine)
    hf_repo: str  # where to download them from, once, with `hf download`
    flags: tuple[str, ...] = REFERENCE_GPU_FLAGS
    tools: tuple[str, ...] = ()  # tool_flags(parser) for a model family vLLM parses calls of
    tensor_parallel: int = 1
    env: dict[str, str] = field(default_factory=dict)
    gpu: bool = True


PROFILES = {
    p.name: p
    for p in (
        Profile(
            "mistral-7b",
            "/models/mistral-7b",
            "TheBloke/Mistral-7B-Instruct-v0.2-GPTQ",
            tools=tool_flags("mistral"),
        ),
        Profile(
            "llama3-70b",
            "/models/llama3-70b",
            "TechxGenus/Meta-Llama-3-70B-Instruct-GPTQ",
            tools=tool_flags("llama3_json"),
            tensor_parallel=4,  # ~40 GB of GPTQ weights: four GPUs, or two with 80 GB each
        ),
        # The embedded default on a CPU (what CI runs): SmolLM2-135M converted from GGUF.
        Profile(
            "smollm2-cpu",
            "",
            "",
            flags=("--enforce-eager", "--max-model-len", "2048", "--dtype", "float32"),
            env={"VLLM_CPU_KVCACHE_SPACE": "1"},
            gpu=False,
        ),
    )
}


DEFAULT_PROFILE = "smollm2-cpu"  # what `voxloop llm start --engine vllm` runs unless told


def profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"Unknown vLLM profile {name!r}. Profiles: {', '.join(PROFILES)}.") from None


def serve_args(
    p: Profile, model_dir: str | None = None, host: str = "127.0.0.1", port: int = 8000
) -> list[str]:
    """Arguments after ``vllm serve`` for a profile."""
    args = [model_dir or p.model_dir, *p.flags, *p.tools]
    if p.tensor_parallel > 1:
        args += ["--tensor-parallel-size", str(p.tensor_parallel)]
    return [*args, "--host", host, "--port", str(port)]


def download_command(p: Profile) -> list[str]:
    return ["hf", "download", p.hf_repo, "--local-dir", p.model_dir]


def docker_run(p: Profile, models: str = "$HOME/models", port: int = 8000) -> list[str]:
    """The reference deployment: NVIDIA's vLLM container on the GPU box, reachable from the LAN."""
    return [
        "docker", "run", "--gpus", "all", "--ipc=host",
        "--ulimit", "memlock=-1", "--ulimit", "stack=67108864",
        "-p", f"{port}:8000", "-v", f"{models}:/models", IMAGE,
        "vllm", "serve", *serve_args(p, host="0.0.0.0", port=8000),
    ]  # fmt: skip
