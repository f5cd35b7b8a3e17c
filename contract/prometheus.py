"""Reading a model server's Prometheus metrics without a Prometheus library.

Both servers export their metrics in Prometheus' text format on the REST
port when a --monitoring_config_file enables it (TF Serving's
prometheus_config: the path is configurable, "/monitoring/prometheus/metrics"
by default).  The rollout tool compares versions from them and the
benchmarks count batches from them; both read them through this one parser.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.request
from typing import Iterable, Mapping

DEFAULT_PATH = "/monitoring/prometheus/metrics"   # TF Serving's monitoring_config.proto

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?"
                     r"\s+(?P<value>\S+)(?:\s+-?\d+)?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclasses.dataclass(frozen=True)
class Sample:
  """One line of the exposition: `name{labels} value`."""
  name: str
  labels: Mapping[str, str]
  value: float


def parse(text: str) -> list[Sample]:
  """The samples of a text exposition; comments and blank lines are skipped.

  Raises ValueError on a line that is not a sample, so a scrape of the wrong
  page (an HTML error, a JSON status) is not read as "no traffic".
  """
  samples = []
  for number, line in enumerate(text.splitlines(), 1):
    line = line.strip()
    if not line or line.startswith("#"):
      continue
    match = _SAMPLE.match(line)
    if match is None:
      raise ValueError(f"line {number} is not a Prometheus sample: {line[:200]!r}")
    labels = {key: re.sub(r'\\[\\"n]', lambda m: _UNESCAPE[m[0]], value)
              for key, value in _LABEL.findall(match["labels"] or "")}
    samples.append(Sample(match["name"], labels, float(match["value"])))
  return samples


def total(samples: Iterable[Sample], name: str, **labels: str) -> float:
  """The sum of the samples called `name` whose labels include `labels`."""
  return sum(s.value for s in samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def scrape(rest_address: str, path: str = DEFAULT_PATH, *,
           timeout: float = 30.0) -> list[Sample]:
  """GET http://`rest_address``path` and parse it."""
  with urllib.request.urlopen(f"http://{rest_address}{path}", timeout=timeout) as response:
    return parse(response.read().decode())


__all__ = ["DEFAULT_PATH", "Sample", "parse", "scrape", "total"]
