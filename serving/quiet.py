"""Keeps the server's log its own (TF Serving's lines, nothing else).

TensorFlow 2.21 logs through absl before `absl::InitializeLog()`, which sends
every line to stderr whatever TF_CPP_MIN_LOG_LEVEL says: its import prints
6-7 C++ lines and the first device query a cuInit error on every machine
without a GPU; and each load of a jax2tf export warns twice, from Python,
about "unsaved custom gradients" (the exports serve no gradients). The server
therefore imports TensorFlow and queries its devices with fd 2 pointed at
/dev/null, and sets TensorFlow's Python logger to errors only.

TF Serving's binary has no -v; as there, TF_CPP_MIN_LOG_LEVEL set to 0 or 1
asks for TensorFlow's own lines, and then nothing is held back. export/ has
its own copy of the idea (serving/ may not import export/).
"""

from __future__ import annotations

import logging
import os
import sys


def tensorflow_verbose() -> bool:
  """Whether the user asked for TensorFlow's own log lines."""
  return os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") in ("0", "1")


def start_tensorflow() -> None:
  """Imports TensorFlow and finds its devices before anything else does.

  A failed import still raises, and start-up reports that error the way
  TF Serving does; only TensorFlow's C++ lines are lost.
  """
  verbose = tensorflow_verbose()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.stderr.flush()
  saved = os.dup(2)
  if not verbose:
    with open(os.devnull, "wb") as null:
      os.dup2(null.fileno(), 2)
  try:
    import tensorflow as tf
    tf.config.list_physical_devices()
  finally:
    os.dup2(saved, 2)
    os.close(saved)
  tf.get_logger().setLevel(logging.INFO if verbose else logging.ERROR)
