"""A closed-loop load generator for any TF Serving endpoint: `python -m clients perf`.

    python -m clients perf --server HOST[:PORT] --model NAME [--signature S]
        [--concurrency 1,2,4,8,16,32] [--duration 10] [--rest] [--image FILE | --random]
        [--json OUT.json] [--plot OUT.png]

At each concurrency level C, C workers each send a request, wait for its
answer and send the next (a closed loop, like Triton's perf_analyzer), for
--duration seconds or --max-requests requests, after a short unrecorded
warm-up. Reported per level: throughput, latency percentiles, and failures
by status code. Requests are not retried, so errors are the server's own.
It needs nothing of this project on the server: real tensorflow/serving
works the same. The inputs are one encoded image (--image, for a signature
with one string input such as predict_bytes) or random tensors shaped from
the signature's metadata (--random). The plot needs matplotlib (the [plot]
extra).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from clients import tensors
from clients.base import ENCODED, IMAGES, Client
from clients.cli_flags import add_connection_flags, add_model_flags, positive_float, positive_int
from clients.errors import ClientError
from clients.results import SignatureInfo

MAX_CONCURRENCY = 1024


@dataclasses.dataclass
class Level:
  """One concurrency level's measurements (latencies in milliseconds)."""
  concurrency: int
  requests: int
  errors: dict[str, int]
  seconds: float
  throughput: float           # successful requests per second
  images_per_second: float
  p50_ms: float
  p90_ms: float
  p99_ms: float
  mean_ms: float
  max_ms: float


def measure(send: Callable[[], Any], concurrency: int, *, duration: float,
            max_requests: int | None = None, warmup: float = 0.0, batch: int = 1) -> Level:
  """Runs `send()` in a closed loop on `concurrency` threads; its Level.

  Bounded by `duration` seconds and, if given, `max_requests` recorded
  requests (whichever comes first); a ClientError counts under its code.
  """
  if not 1 <= concurrency <= MAX_CONCURRENCY:
    raise ValueError(f"concurrency must be 1..{MAX_CONCURRENCY}, got {concurrency}")
  if duration <= 0:
    raise ValueError(f"duration must be positive, got {duration}")
  lock = threading.Lock()
  latencies: list[float] = []
  errors: dict[str, int] = {}
  issued = 0
  start = time.monotonic()
  record_from = start + warmup
  stop_at = record_from + duration

  def worker() -> None:
    nonlocal issued
    while True:
      began = time.monotonic()
      if began >= stop_at:
        return
      recorded = began >= record_from
      if recorded:
        with lock:
          if max_requests is not None and issued >= max_requests:
            return
          issued += 1
      try:
        send()
        code = None
      except ClientError as e:
        code = e.code
      elapsed = time.monotonic() - began
      if recorded:
        with lock:
          if code is None:
            latencies.append(elapsed)
          else:
            errors[code] = errors.get(code, 0) + 1

  threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  seconds = max(min(time.monotonic(), stop_at) - record_from, 1e-9)
  ms = np.asarray(latencies) * 1e3 if latencies else np.full(1, np.nan)
  p50, p90, p99 = np.percentile(ms, [50, 90, 99])
  return Level(concurrency, len(latencies) + sum(errors.values()), dict(sorted(errors.items())),
               round(seconds, 3), len(latencies) / seconds, len(latencies) * batch / seconds,
               float(p50), float(p90), float(p99), float(np.mean(ms)), float(np.max(ms)))


def random_inputs(signature: SignatureInfo, batch: int,
                  seed: int = 0) -> dict[str, np.ndarray]:
  """Random tensors for each input, shaped by the metadata (batch dimension: `batch`)."""
  rng = np.random.default_rng(seed)
  inputs = {}
  for name, info in signature.inputs.items():
    if info.dtype == "DT_STRING":
      raise ValueError(f"input {name!r} is a string: give --image")
    if info.shape is None or any(d is None for d in info.shape[1:]):
      raise ValueError(f"input {name!r} has shape {info.shape}: only the batch dimension "
                       "may be unknown for --random")
    dtype = tensors.datatype_numpy(info.dtype)
    shape = (batch, *info.shape[1:])
    if dtype.kind == "f":
      inputs[name] = rng.uniform(-1, 1, shape).astype(dtype)
    elif dtype.kind == "b":
      inputs[name] = rng.integers(0, 2, shape).astype(dtype)
    else:
      inputs[name] = rng.integers(0, min(np.iinfo(dtype).max, 255), shape,
                                  endpoint=True).astype(dtype)
  return inputs


def image_inputs(signature: SignatureInfo, image: bytes, batch: int) -> dict[str, np.ndarray]:
  """The encoded image `batch` times, in the signature's one string input."""
  strings = [n for n, i in signature.inputs.items() if i.dtype == "DT_STRING"]
  if len(signature.inputs) != 1 or not strings:
    raise ValueError(f"--image needs a signature with one string input, this one has "
                     f"{ {n: i.dtype for n, i in signature.inputs.items()} }")
  data = np.empty(batch, dtype=object)
  data[:] = [image] * batch
  return {strings[0]: data}


def sweep(client: Client, model: str, *, signature: str, inputs: dict[str, np.ndarray],
          levels: Sequence[int], duration: float, max_requests: int | None = None,
          warmup: float = 0.5, version: int | None = None, label: str | None = None,
          on_level: Callable[[Level], None] | None = None) -> list[Level]:
  """`measure` at each concurrency level, one Predict of `inputs` per request."""
  batch = len(next(iter(inputs.values())))

  def send() -> None:
    client.predict(model, inputs, signature=signature, version=version, label=label,
                   batch_size=batch, progress=False)

  results = []
  for concurrency in levels:
    level = measure(send, concurrency, duration=duration, max_requests=max_requests,
                    warmup=warmup, batch=batch)
    results.append(level)
    if on_level is not None:
      on_level(level)
  return results


def plot(levels: Sequence[Level], path: str | Path, title: str) -> None:
  """Latency percentiles against throughput, one point per concurrency level."""
  try:
    import matplotlib
  except ImportError:
    raise ValueError("--plot needs matplotlib: pip install 'vit-serving[plot]'") from None
  matplotlib.use("Agg")
  from matplotlib import pyplot

  figure, axes = pyplot.subplots(figsize=(7, 4.5))
  throughput = [lv.throughput for lv in levels]
  for key, style in (("p50_ms", "o-"), ("p90_ms", "s--"), ("p99_ms", "^:")):
    axes.plot(throughput, [getattr(lv, key) for lv in levels], style, label=key[:3])
  for lv in levels:
    axes.annotate(f"c={lv.concurrency}", (lv.throughput, lv.p50_ms), fontsize=8,
                  textcoords="offset points", xytext=(4, -10))
  axes.set(xlabel="throughput (requests/s)", ylabel="latency (ms)", title=title)
  axes.grid(alpha=0.3)
  axes.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  pyplot.close(figure)


def concurrency_list(text: str) -> list[int]:
  try:
    levels = [int(part) for part in text.split(",") if part.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}")
  if not levels or not all(1 <= c <= MAX_CONCURRENCY for c in levels):
    raise argparse.ArgumentTypeError(f"each level must be 1..{MAX_CONCURRENCY}: {text!r}")
  return levels


def add_parser(commands: Any) -> None:
  """Registers `perf` with the CLI's subcommands."""
  summary = "closed-loop load: throughput and latency per concurrency level"
  sub = commands.add_parser("perf", help=summary, description=summary)
  sub.set_defaults(run=_run, label=None)
  add_connection_flags(sub)
  add_model_flags(sub)
  sub.add_argument("--signature",
                   help=f"default: {ENCODED.name} with --image, else {IMAGES.name}")
  sub.add_argument("--concurrency", type=concurrency_list, default=[1, 2, 4, 8, 16, 32],
                   help="comma-separated levels (default 1,2,4,8,16,32)")
  sub.add_argument("--duration", type=positive_float, default=10.0,
                   help="seconds measured per level (default 10)")
  sub.add_argument("--warmup", type=float, default=0.5,
                   help="unrecorded seconds before each level (default 0.5)")
  sub.add_argument("--max-requests", type=positive_int,
                   help="stop a level after this many requests")
  sub.add_argument("--batch", type=positive_int, default=1, help="images per request")
  source = sub.add_mutually_exclusive_group(required=True)
  source.add_argument("--image", type=Path, help="an encoded image file to send")
  source.add_argument("--random", action="store_true", help="random inputs from the metadata")
  sub.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON")
  sub.add_argument("--plot", type=Path, metavar="PNG", help="plot latency vs throughput")


def _run(client: Client, args: argparse.Namespace) -> int:
  from clients.retry import NO_RETRY
  client.retry = NO_RETRY  # count the server's errors, not the retries' successes
  signature_name = args.signature or (ENCODED.name if args.image else IMAGES.name)
  signatures = client.metadata(args.model, version=args.version, label=args.label).signatures
  if signature_name not in signatures:
    raise ValueError(f"model {args.model} has no signature {signature_name!r} "
                     f"(it has {sorted(signatures)})")
  signature = signatures[signature_name]
  inputs = (image_inputs(signature, args.image.read_bytes(), args.batch) if args.image
            else random_inputs(signature, args.batch))
  where = client.url
  print(f"# {args.model} {signature_name} batch {args.batch} via {where}, "
        f"{args.duration:g} s per level")
  print(f"# {'conc':>4} {'req/s':>9} {'img/s':>9} {'p50 ms':>8} {'p90 ms':>8} "
        f"{'p99 ms':>8} {'requests':>8}  errors")

  def show(lv: Level) -> None:
    errors = ", ".join(f"{code} {n}" for code, n in lv.errors.items()) or "-"
    print(f"  {lv.concurrency:4d} {lv.throughput:9.1f} {lv.images_per_second:9.1f} "
          f"{lv.p50_ms:8.2f} {lv.p90_ms:8.2f} {lv.p99_ms:8.2f} {lv.requests:8d}  {errors}",
          flush=True)

  levels = sweep(client, args.model, signature=signature_name, inputs=inputs,
                 levels=args.concurrency, duration=args.duration, warmup=args.warmup,
                 max_requests=args.max_requests, version=args.version, label=args.label,
                 on_level=show)
  report = {"server": where, "model": args.model, "signature": signature_name,
            "batch": args.batch, "duration_s": args.duration,
            "levels": [dataclasses.asdict(lv) for lv in levels]}
  if args.json:
    args.json.write_text(json.dumps(report, indent=1) + "\n")
  if args.plot:
    plot(levels, args.plot, f"{args.model} {signature_name} via {client.transport}")
  failed = sum(sum(lv.errors.values()) for lv in levels)
  if failed:
    print(f"{failed} requests failed", file=sys.stderr)
  return 1 if failed else 0
