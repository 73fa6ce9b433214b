"""Turn the bundled SmolLM2 GGUF into a Hugging Face safetensors folder that vLLM can serve.

vLLM cannot read GGUF. transformers can (with ``gguf_file=``, dequantizing the weights) but will
not save a model loaded that way, so a fresh model is built from the same config, given the
loaded weights, and saved. Run once; voxloop caches the folder in its data directory.

    python -m voxloop.llm.convert MODEL.gguf OUT_DIR
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _step(n: int, total: int, what: str) -> None:
    bar = "#" * n + "." * (total - n)
    print(f"[{bar}] {what}", file=sys.stderr, flush=True)


def convert(gguf: Path, out: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    folder, name = str(gguf.parent), gguf.name
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    _step(1, 5, "reading the tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    _step(2, 5, "reading and dequantizing the weights")
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    _step(3, 5, "building a plain model from the same config")
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=False)
    model.tie_weights()
    _step(4, 5, "writing safetensors")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "voxloop-source.json").write_text(json.dumps({"gguf": str(gguf)}))
    tmp.replace(out) if not out.exists() else None
    _step(5, 5, f"done in {time.monotonic() - started:.0f} s: {out}")
    return out


if __name__ == "__main__":  # pragma: no cover - run by voxloop in a subprocess
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
