"""Model cards (``README.md``) and loss curves (``training_curve.png``) of the tiny-LLaVA stages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def plot_training_curve(losses: list[float], path: str | Path, title: str) -> Path:
    """Loss per step, with a running mean so the trend is readable at batch-level noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="loss")
    window = max(1, len(losses) // 20)
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, lw=1.8, label=f"running mean ({window} steps)")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _table(rows: dict) -> str:
    lines = ["| | |", "|---|---|"]
    for k, v in rows.items():
        lines.append(f"| {k} | {v} |")
    return "\n".join(lines)


def write_model_card(
    out_dir: str | Path,
    title: str,
    description: str,
    facts: dict,
    evaluation: dict,
    config: dict,
) -> Path:
    """``README.md`` with what the stage is, what it was trained on, its losses and accuracy.

    Timings (``*_seconds``) stay out: the card is part of the checkpoint folder, whose content hash is the
    records' ``model_fingerprint``, so a card that said how long this run took would make two runs with
    identical weights write different records. They are in the job's log and benchmark file."""

    def untimed(d: dict) -> dict:
        return {k: v for k, v in d.items() if not k.endswith("_seconds")}

    text = "\n\n".join(
        [
            f"# {title}",
            description.strip(),
            "## Training\n\n" + _table(untimed(facts)),
            "## Held-out evaluation\n\n" + _table(untimed(evaluation)),
            "![training curve](training_curve.png)",
            "## Configuration\n\n```json\n" + json.dumps(config, indent=2, sort_keys=True) + "\n```",
            "Training data, per class and by image index: `training_manifest.json`.",
        ]
    )
    path = Path(out_dir) / "README.md"
    path.write_text(text + "\n")
    return path
