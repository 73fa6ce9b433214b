"""The embedded llama.cpp server on one or two threads, on an idle box and beside one busy
program: time to the first token and time per token.

Why this exists: llama.cpp's threads spin at a barrier after every operation. Two threads are
the fastest for one conversation on 2 cores, until another program keeps a core busy; then the
thread that shares that core waits a scheduler slice at every barrier. This is what
``voxloop.llm.stall`` watches for. The stalled rows take a few minutes (about 3 s a token).

Run from the repository root (after ``voxloop llm start`` once, or any ``voxloop chat``, so the
Q8_0 file exists; or pass a GGUF file)::

    python benchmarks/llm_threads.py [MODEL.gguf]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx

from voxloop.llm.server import embedded_gguf, free_port, llama_server_binary

SYSTEM = "You are a helpful voice assistant. Answer in one or two short sentences."
QUESTION = "Tell me a story about a dragon."
TOKENS = 48
REQUESTS = 3
CONFIGS = ((2, None), (1, None), (1, 2))  # (--threads, --threads-batch)


def measure(gguf: str, threads: int, batch: int | None, busy: int) -> tuple[list[float], list[float]]:
    port = free_port()
    cmd = [
        str(llama_server_binary()), "--model", gguf, "--host", "127.0.0.1", "--port", str(port),
        "--ctx-size", "8192", "--parallel", "4", "--threads", str(threads), "--no-webui",
    ]  # fmt: skip
    if batch:
        cmd += ["--threads-batch", str(batch)]
    server = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=lambda: os.nice(10)
    )  # nice 10, as voxloop starts it
    url = f"http://127.0.0.1:{port}/v1"
    hogs: list[subprocess.Popen[bytes]] = []
    first_ms: list[float] = []
    per_token_ms: list[float] = []
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        for i in range(REQUESTS):
            messages = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"{QUESTION} ({i})"},  # a new prompt each time
            ]
            body = {"messages": messages, "stream": True, "max_tokens": TOKENS, "temperature": 0}
            body["ignore_eos"] = True  # every reply is TOKENS long
            start = time.perf_counter()
            first = None
            count = 0
            with httpx.stream("POST", url + "/chat/completions", json=body, timeout=900) as response:
                for line in response.iter_lines():
                    if not line.startswith("data: {"):
                        continue
                    if json.loads(line[6:])["choices"][0]["delta"].get("content"):
                        count += 1
                        first = first or time.perf_counter()
            end = time.perf_counter()
            assert first is not None, "no token came"
            first_ms.append((first - start) * 1000)
            per_token_ms.append((end - first) * 1000 / max(1, count - 1))
    finally:
        for hog in hogs:
            hog.kill()
        server.kill()
        server.wait()
    return first_ms, per_token_ms


def main() -> None:
    gguf = sys.argv[1] if len(sys.argv) > 1 else str(embedded_gguf())
    print(f"| threads | busy programs beside it | first token (ms) | ms per token |  ({gguf})")
    print("|---|---|---|---|")
    for busy in (0, 1):
        for threads, batch in CONFIGS:
            first, per_token = measure(gguf, threads, batch, busy)
            name = f"{threads}" + (f", --threads-batch {batch}" if batch else "")
            print(
                f"| {name} | {busy} | {min(first):.0f}-{max(first):.0f} "
                f"| {min(per_token):.1f}-{max(per_token):.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
