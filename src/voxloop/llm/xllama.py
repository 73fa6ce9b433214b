"""llama.cpp's own server from the prebuilt ``xllamacpp`` wheel, run as a child process.

``python -m voxloop.llm.xllama --model M.gguf --port P ...`` takes the few llama-server flags
voxloop passes (:func:`voxloop.llm.server.llamacpp_launch`) and serves the same
OpenAI-compatible HTTP API on 127.0.0.1 until it is sent SIGTERM or SIGINT. voxloop supervises
it like the source-built ``llama-server`` (a stall or a crash in it cannot take voxloop down),
and the wheel installs in seconds instead of a build of minutes.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m voxloop.llm.xllama")
    p.add_argument("--model", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ctx-size", type=int, default=4096)
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-ram", type=int, default=8192)
    p.add_argument("--alias", default="")
    p.add_argument("--metrics", action="store_true")
    p.add_argument("--no-webui", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import xllamacpp

    args = parse(sys.argv[1:] if argv is None else argv)
    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.hostnames = [args.host]
    params.port = args.port
    params.n_ctx = args.ctx_size
    params.n_parallel = args.parallel
    params.kv_unified = True  # as llama-server's default: a slot may use the whole context
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.cache_ram_mib = args.cache_ram
    if args.alias:
        params.model_alias = {args.alias}
    params.endpoint_metrics = args.metrics
    params.ui = not args.no_webui
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = xllamacpp.Server(params)  # listens from here on, in its own threads
    print(f"xllamacpp serving {args.model} at http://{server.listening_address}", flush=True)
    stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
