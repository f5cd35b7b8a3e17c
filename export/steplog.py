"""The exporter's step log ("export: ...") on stderr, for the command lines.

The library logs its steps (download, convert, verify, publish, with timings)
to the "export" logger and prints nothing itself; a command line shows them
while it runs.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator


@contextlib.contextmanager
def on_stderr() -> Iterator[None]:
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter("export: %(message)s"))
  logger = logging.getLogger("export")
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  logger.propagate = False
  try:
    yield
  finally:
    logger.removeHandler(handler)
