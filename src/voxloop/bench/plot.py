"""`voxloop bench --plot`: where the time goes, per stage, both pipelines side by side (p50)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _segments(summary: dict[str, Any]) -> dict[str, list[tuple[str, float]]]:
    """Stacked p50 segments adding up to each pipeline's p50 latency."""
    v = {label: p50 for label, (p50, _) in summary["voxloop"]["stages"].items()}
    r = {label: p50 for label, (p50, _) in summary["reference"]["stages"].items()}

    def clean(x: float) -> float:
        return 0.0 if x != x else max(0.0, x)

    ours = [
        ("waiting for the pause", clean(v["endpoint wait"] - v["head start (reply began before endpoint)"])),
        ("STT", clean(v["STT"])),
        ("LLM to first sentence", clean(v["LLM first sentence"])),
        ("TTS first sentence", clean(v["TTS first sentence"])),
    ]
    ours.append(("other", clean(summary["voxloop"]["latency_p50_ms"] - sum(x for _, x in ours))))
    ref = [
        ("waiting for the pause", clean(r["endpoint wait"])),
        ("STT", clean(r["STT"])),
        ("LLM whole reply", clean(r["LLM whole reply (blocking)"])),
    ]
    ref.append(("other", clean(summary["reference"]["latency_p50_ms"] - sum(x for _, x in ref))))
    return {"voxloop": ours, "reference": ref}


def plot(summary: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {
        "waiting for the pause": "#9e9e9e",
        "STT": "#4e79a7",
        "LLM to first sentence": "#f28e2b",
        "LLM whole reply": "#e15759",
        "TTS first sentence": "#59a14f",
        "other": "#d4d4d4",
    }
    fig, ax = plt.subplots(figsize=(7, 4.5))
    seen: set[str] = set()
    for x, (pipeline, segments) in enumerate(_segments(summary).items()):
        bottom = 0.0
        for label, value in segments:
            ax.bar(
                x,
                value,
                bottom=bottom,
                color=colors[label],
                label=None if label in seen else label,
                width=0.55,
            )
            seen.add(label)
            bottom += value
        total = summary[pipeline]["latency_p50_ms"]
        p95 = summary[pipeline]["latency_p95_ms"]
        ax.text(x, bottom + 40, f"p50 {total:.0f} ms\np95 {p95:.0f} ms", ha="center", va="bottom", fontsize=9)
    ours, ref = summary["voxloop"], summary["reference"]
    ax.set_xticks(
        [0, 1],
        [
            f"voxloop\n(first audio, {ours['answered']}/{ours['turns']} turns)",
            f"reference\n(reply text, {ref['answered']}/{ref['turns']} turns)",
        ],
    )
    ax.set_ylabel("ms from the end of speech (p50)")
    ax.set_title(f"End of speech to reply: voxloop is {summary['ratio_p50']:.2f}x the reference")
    ax.legend(loc="upper left", fontsize=8)
    top = max(ours["latency_p95_ms"], ref["latency_p95_ms"], ref["latency_p50_ms"])
    ax.set_ylim(0, (top if top == top else 1000) * 1.25)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
