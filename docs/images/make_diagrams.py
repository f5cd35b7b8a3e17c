"""Draws the README's diagrams as small PNGs next to this file:

  architecture.png  export -> model repository -> server -> clients
  ab_switch.png     the rollout tool's labels: stable / canary / previous

    .venv/bin/python docs/images/make_diagrams.py

Drawn with matplotlib (the `plot` extra) so the pictures are regenerated
from this file instead of edited by hand; the boxes name the real packages,
files and commands.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

HERE = Path(__file__).resolve().parent
BLUE, GREEN, ORANGE, GREY = "#dbe9f6", "#dff2e1", "#fde9d2", "#eeeeee"


def _box(ax, x: float, y: float, w: float, h: float, title: str, body: str, color: str) -> None:
  ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                              facecolor=color, edgecolor="#555555", linewidth=1))
  ax.text(x + w / 2, y + h - 0.17, title, ha="center", va="top", fontsize=9.5, weight="bold")
  ax.text(x + w / 2, y + h - 0.47, body, ha="center", va="top", fontsize=8, linespacing=1.35)


def _arrow(ax, start, end, label: str = "", curve: float = 0.0, offset=(0, 0.1)) -> None:
  ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, linewidth=1.2,
                               color="#333333", connectionstyle=f"arc3,rad={curve}"))
  if label:
    ax.text((start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1], label,
            ha="center", va="bottom", fontsize=8, style="italic")


def architecture(path: Path) -> None:
  fig, ax = plt.subplots(figsize=(9, 3.3), dpi=90)
  _box(ax, 0.0, 1.0, 2.0, 1.9, "export/", "checkpoint (.npz, B/16,\naugreg name)\n-> Flax ViT -> jax2tf\n"
       "-> verified vs JAX", BLUE)
  _box(ax, 2.6, 1.0, 2.0, 1.9, "model repository", "models/<name>/<version>/\n(SavedModel, warmup)\n"
       "+ models.config\n(versions, labels)", GREY)
  _box(ax, 5.2, 1.75, 2.0, 1.35, "tensorflow/serving", "docker compose, Kubernetes\n(production, GPU)",
       GREEN)
  _box(ax, 5.2, 0.15, 2.0, 1.35, "python -m serving", "embedded drop-in\n(local default)", GREEN)
  _box(ax, 7.8, 1.0, 2.0, 1.9, "clients/", "gRPC :8500 / REST :8501\npreprocessing, A/B\n"
       "routing, CLI (no TF)", ORANGE)
  _arrow(ax, (2.0, 1.95), (2.6, 1.95), "publish")
  _arrow(ax, (4.6, 2.1), (5.2, 2.4))
  _arrow(ax, (4.6, 1.6), (5.2, 0.85))
  _arrow(ax, (7.8, 2.2), (7.2, 2.4), "")
  _arrow(ax, (7.8, 1.6), (7.2, 0.85), "")
  ax.text(6.2, 1.53, "same flags, files, API", ha="center", va="bottom", fontsize=7.5,
          style="italic")
  ax.set_xlim(-0.1, 9.9)
  ax.set_ylim(0.0, 3.2)
  ax.axis("off")
  fig.savefig(path, bbox_inches="tight")
  plt.close(fig)


def ab_switch(path: Path) -> None:
  fig, ax = plt.subplots(figsize=(9, 2.9), dpi=90)
  _box(ax, 0.0, 0.6, 1.9, 1.5, "new version", "exported,\nnot served\n(pinned policy)", GREY)
  _box(ax, 2.7, 0.6, 1.9, 1.5, "canary", "loaded, AVAILABLE;\nclients send it\na small share", ORANGE)
  _box(ax, 5.4, 0.6, 1.9, 1.5, "stable", "takes normal\ntraffic", GREEN)
  _box(ax, 8.1, 0.6, 1.9, 1.5, "previous", "old stable, kept\nloaded for a\nrollback", BLUE)
  _arrow(ax, (1.9, 1.35), (2.7, 1.35), "canary N")
  _arrow(ax, (4.6, 1.35), (5.4, 1.35), "promote")
  _arrow(ax, (7.3, 1.35), (8.1, 1.35), "promote")
  _arrow(ax, (8.1, 0.75), (7.3, 0.75), "rollback", offset=(0, -0.42))
  _arrow(ax, (3.65, 0.6), (0.95, 0.6), "rollback (drop canary)", curve=-0.35, offset=(0, -0.72))
  _arrow(ax, (9.05, 2.1), (9.05, 2.6), "")
  ax.text(9.05, 2.65, "retire N: unloaded", ha="center", va="bottom", fontsize=8, style="italic")
  ax.text(3.9, 2.6, "python -m ops.rollout --model M  canary | promote | rollback | retire",
          ha="center", fontsize=8.5, family="monospace")
  ax.set_xlim(-0.1, 10.1)
  ax.set_ylim(-0.3, 3.0)
  ax.axis("off")
  fig.savefig(path, bbox_inches="tight")
  plt.close(fig)


def main() -> None:
  architecture(HERE / "architecture.png")
  ab_switch(HERE / "ab_switch.png")


if __name__ == "__main__":
  main()
