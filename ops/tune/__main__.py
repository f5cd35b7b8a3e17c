"""`python -m ops.tune` (`vit-tune`, `make tune`): measure batching
configurations for one model and write the best one.

    python -m ops.tune --model vit_digits --out DIR [--p99-ms 50]
        [--budget-s 480] [--concurrency 1,2,4,8,16,32] [--model-config models.config]
        [--server-cmd TEMPLATE] [--shipped deploy/config/batching_parameters.config]

Writes DIR/batching_parameters.txt, DIR/report.json and DIR/report.png
(docs/tuning.md). Exit status: 0 written; 2 bad input or nothing to report
(unknown model, unmeetable target, a server that does not start, a budget
too small), with one line on stderr saying why; 130 interrupted before
anything was measured (an interrupted search that measured something writes
its files and exits 0).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "deploy" / "config" / "batching_parameters.config"


def parse_args(argv: list[str]) -> argparse.Namespace:
  """Needs nothing heavy, so --help and bad flags answer at once."""
  from clients.cli_flags import positive_float, positive_int
  from clients.perf import concurrency_list
  from ops.tune.measure import DEFAULT_COMMAND, PLACEHOLDERS
  p = argparse.ArgumentParser(
      prog="python -m ops.tune",
      description="Measure TF Serving batching configurations for one model on freshly "
                  "started servers and write the best one (batching_parameters.txt, "
                  "report.json, report.png).")
  p.add_argument("--model", required=True, help="model name in --model-config")
  p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")
  p.add_argument("--model-config", type=Path, default=Path("models.config"), metavar="FILE",
                 help="the ModelServerConfig naming the model (default models.config)")
  p.add_argument("--p99-ms", type=positive_float, default=50.0,
                 help="p99 latency target in ms (default 50)")
  p.add_argument("--budget-s", type=positive_float, default=480.0,
                 help="time budget in seconds, server starts included (default 480)")
  p.add_argument("--concurrency", type=concurrency_list, default=[1, 2, 4, 8, 16, 32],
                 help="closed-loop client levels (default 1,2,4,8,16,32)")
  p.add_argument("--signature", default="serving_default", help="signature to load")
  p.add_argument("--batch", type=positive_int, default=1, help="images per request (default 1)")
  p.add_argument("--server-cmd", default=DEFAULT_COMMAND, metavar="TEMPLATE",
                 help="server command with placeholders "
                      f"{', '.join('{' + n + '}' for n in PLACEHOLDERS)} "
                      "(default: the embedded server); e.g. tensorflow_model_server or a "
                      "docker run line, see docs/tuning.md")
  p.add_argument("--shipped", type=Path, default=SHIPPED, metavar="FILE",
                 help="the batching configuration to beat, measured first and last: "
                      "another replaces it only by more than its run-to-run noise "
                      "(default deploy/config/batching_parameters.config)")
  p.add_argument("--write-warmup", action="store_true",
                 help="when the served version does not warm every batch size the chosen "
                      "configuration runs, publish a copy of it as a new version that does "
                      "(python -m export.rewarm; needs the [export] extra)")
  p.add_argument("--short-s", type=positive_float, default=1.0,
                 help="seconds per level in the short rung (default 1)")
  p.add_argument("--long-s", type=positive_float, default=3.0,
                 help="seconds per level in the long rung (default 3)")
  p.add_argument("--start-timeout-s", type=positive_float, default=300.0,
                 help="how long a server may take to serve the model (default 300)")
  args = p.parse_args(argv)
  try:
    from ops.tune.measure import check_template
    check_template(args.server_cmd)
  except ValueError as e:
    p.error(str(e))
  args.concurrency = sorted(set(args.concurrency))
  return args


def main(argv: list[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  from tqdm import tqdm

  from ops.tune import report
  from ops.tune.measure import ServerError
  from ops.tune.tuner import Settings, Tuner, TuneError

  settings = Settings(model=args.model, model_config=args.model_config, p99_ms=args.p99_ms,
                      levels=args.concurrency, budget_s=args.budget_s,
                      server_cmd=args.server_cmd, shipped=args.shipped,
                      signature=args.signature, batch=args.batch, short_s=args.short_s,
                      long_s=args.long_s, start_timeout_s=args.start_timeout_s)
  bars: list[tqdm] = []     # made at the first step, so input errors print alone

  def progress(used: float, what: str) -> None:
    if not bars:
      bars.append(tqdm(total=round(args.budget_s), unit="s", desc="tuning", file=sys.stderr,
                       leave=False,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total} s "
                                  "{postfix}"))
    bars[0].n = min(round(used), bars[0].total)
    bars[0].set_postfix_str(what[:70])

  try:
    try:
      result = Tuner(settings, progress).run()
    finally:
      for bar in bars:
        bar.close()
    files = report.write(args.out, result)
  except (TuneError, ServerError, ValueError) as e:
    print(f"vit-tune: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("vit-tune: interrupted; nothing was written", file=sys.stderr)
    return 130
  chosen, at = result["chosen"], result["chosen_at_target"]
  shipped = result.get("shipped_at_target")
  print(f"{'interrupted: ' if result['interrupted'] else ''}chosen: {chosen['name']}: "
        f"{at['throughput']:.1f} req/s at c={at['concurrency']} (p99 {at['p99_ms']:.1f} ms "
        f"<= {args.p99_ms:g})" + (f"; shipped {shipped['throughput']:.1f} req/s"
                                    if shipped else ""))
  print(f"why: {result['why']}")
  missing = result["warmup"]["missing"]
  print(f"warmup: needs batch sizes {result['warmup']['needs']}" + (
      f"; version {result['version']} does not warm {missing}: re-export with "
      f"--warmup-batch-sizes {','.join(map(str, result['warmup']['needs']))}"
      if missing else "; all warmed"))
  for path in files:
    print(path)
  if args.write_warmup and missing:
    return _rewarm(result["version_dir"], result["warmup"]["needs"])
  return 0


def _rewarm(version_dir: str, sizes: list[int]) -> int:
  """export.rewarm in its own process: it needs TensorFlow, the tuner does not."""
  import subprocess
  done = subprocess.run([sys.executable, "-m", "export.rewarm", version_dir,
                         "--batch-sizes", ",".join(map(str, sizes))], cwd=ROOT,
                        capture_output=True, text=True)
  if done.returncode != 0:
    print(f"vit-tune: error: {done.stderr.strip().splitlines()[-1]}", file=sys.stderr)
    return 2
  print(f"warmup: published {done.stdout.strip()} (a copy of {version_dir} warming "
        f"{','.join(map(str, sizes))})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
