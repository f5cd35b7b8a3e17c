"""The tuner's three files, written together: `batching_parameters.txt`
(the chosen configuration, commented with what was measured, where, when
and against which target), `report.json` (every measurement) and
`report.png` (throughput against p99 for every candidate).

They are written into a temporary directory next to OUT and moved into
place only when all three exist, so an error or Ctrl-C while writing
leaves OUT as it was (each file is replaced atomically).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
from pathlib import Path
from typing import Sequence

from ops.tune.search import goodput

FILES = ("batching_parameters.txt", "report.json", "report.png")


def text_proto(report: dict) -> str:
  """The chosen configuration with its provenance as comments."""
  chosen, target = report["chosen"], report["target"]
  best = report["chosen_at_target"]
  lines = [
      "BatchingParameters (tensorflow_serving/servables/tensorflow/",
      "session_bundle_config.proto) for --batching_parameters_file, chosen by",
      f"`python -m ops.tune` ({report['finished']}).",
      "",
      f"Measured: model {report['model']} (version {report['version']}, signature "
      f"{report['signature']}, {report['batch']} image(s) per request), closed-loop "
      f"gRPC clients at concurrency {','.join(map(str, report['levels']))}, "
      f"{report['durations_s']['long']:g} s per level.",
      f"Where: host {report['host']}, {report['cpus']} CPU core(s), server command: "
      f"{report['server_command']}",
      f"Target: p99 <= {target['p99_ms']:g} ms. Best at the target: "
      f"{best['throughput']:.1f} req/s at concurrency {best['concurrency']} "
      f"(p99 {best['p99_ms']:.1f} ms)" + (
          f"; the shipped configuration: {report['shipped_at_target']['throughput']:.1f} "
          "req/s" if report.get("shipped_at_target") else "") + ".",
      f"Why: {report['why']}",
      f"Warmup: the export must warm batch sizes {report['warmup']['needs']} "
      f"(the served version warms {report['warmup']['warmed'] or 'none'}"
      + (f"; missing {report['warmup']['missing']}" if report['warmup']['missing'] else "")
      + ").",
  ]
  if chosen["batching"]:
    body = _fields(chosen)
  else:
    lines.append("Batching off measured best: run the server without --enable_batching; "
                 "these are the neutral values if batching is enabled anyway.")
    body = _fields({"allowed_batch_sizes": [1], "max_batch_size": 1,
                    "batch_timeout_micros": 0, "num_batch_threads": 1,
                    "max_enqueued_batches": 16})
  comments = "".join(f"# {w}\n" if w else "#\n" for line in lines
                     for w in (textwrap.wrap(line, 76) or [""]))
  return comments + body


def _fields(c: dict) -> str:
  return ("".join(f"allowed_batch_sizes: {b}\n" for b in c["allowed_batch_sizes"])
          + f"max_batch_size {{ value: {c['max_batch_size']} }}\n"
          f"batch_timeout_micros {{ value: {c['batch_timeout_micros']} }}\n"
          f"num_batch_threads {{ value: {c['num_batch_threads']} }}\n"
          f"max_enqueued_batches {{ value: {c['max_enqueued_batches']} }}\n"
          "pad_variable_length_inputs: false\n")


def plot(report: dict, path: Path) -> None:
  """Throughput against p99, one line per candidate (its concurrency
  levels), the Pareto frontier over all points, the target, the chosen and
  the shipped configuration's points at the target."""
  try:
    import matplotlib
  except ImportError:
    raise ValueError("report.png needs matplotlib: pip install 'vit-serving[plot]'") from None
  matplotlib.use("Agg")
  from matplotlib import pyplot

  target = report["target"]["p99_ms"]
  figure, axes = pyplot.subplots(figsize=(7.5, 4.6))
  points = []
  labelled: set[str] = set()       # each legend entry once

  def label(text: str) -> str | None:
    if text in labelled:
      return None
    labelled.add(text)
    return text

  for result in report["candidates"]:
    levels = result["levels"]
    if not levels:
      continue
    xs, ys = [lv["p99_ms"] for lv in levels], [lv["throughput"] for lv in levels]
    points += zip(xs, ys)
    shipped = result["candidate"]["source"] == "shipped"
    if result["rung"] != report["decided_on"] and not shipped:   # not chosen from: points
      axes.plot(xs, ys, ".", color="grey", alpha=0.5, label=label("short measurements"))
      continue
    style = {"linewidth": 0.9, "alpha": 0.6, "marker": "o", "markersize": 3, "color": "grey"}
    if result["chosen"]:
      style.update(color="tab:green", alpha=1.0, linewidth=1.8, label=label("chosen"))
    elif shipped:
      style.update(color="tab:orange", alpha=0.9, label=label("shipped (each run)"))
    else:
      style.update(label=label("final measurements"))
    axes.plot(xs, ys, **style)
  frontier, best = [], 0.0
  for x, y in sorted(points):
    if y > best:
      frontier.append((x, y))
      best = y
  if frontier:
    frontier.append((max(x for x, _ in points), best))
    axes.step(*zip(*frontier), where="post", color="tab:blue", linewidth=1.2,
              label="Pareto frontier (all points)")
  axes.axvline(target, color="tab:red", linestyle="--", linewidth=1,
               label=f"p99 target {target:g} ms")
  for key, color, label, size in (("shipped_at_target", "tab:orange", "shipped", 16),
                                  ("chosen_at_target", "tab:green", "chosen", 10)):
    at = report.get(key)       # the chosen star smaller, on top: both show when they meet
    if at:
      axes.plot([at["p99_ms"]], [at["throughput"]], "*", color=color, markersize=size,
                markeredgecolor="black", label=f"{label} at target (c={at['concurrency']})")
  axes.set_xscale("log")
  configurations = len({c["candidate"]["name"] for c in report["candidates"]})
  axes.set(xlabel="p99 latency (ms, log)", ylabel="throughput (requests/s)",
           title=f"{report['model']}: {configurations} batching configurations, "
                 f"{len(report['candidates'])} measurements")
  axes.grid(alpha=0.3, which="both")
  axes.legend(fontsize=7, loc="lower right")
  figure.tight_layout()
  figure.savefig(path, dpi=80)
  pyplot.close(figure)


def at_target(levels: Sequence[dict], p99_ms: float) -> dict | None:
  """The level with the highest goodput: throughput where p99 meets the target."""
  good = goodput(levels, p99_ms)
  best = max(good, key=good.get, default=None)
  if best is None or good[best] <= 0:
    return None
  level = next(lv for lv in levels if lv["concurrency"] == best)
  return {k: level[k] for k in ("concurrency", "throughput", "p99_ms")}


def write(out: Path, report: dict) -> list[Path]:
  """All three files into `out` (created if needed); OUT is untouched on failure."""
  import json
  out = out.resolve()
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
  umask = os.umask(0)
  os.umask(umask)
  tmp.chmod(0o777 & ~umask)       # mkdtemp's 0700 would become OUT's mode
  try:
    (tmp / "batching_parameters.txt").write_text(text_proto(report))
    (tmp / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, tmp / "report.png")
    if not out.exists():
      os.rename(tmp, out)
      return [out / f for f in FILES]
    for name in FILES:
      os.replace(tmp / name, out / name)
    return [out / f for f in FILES]
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
