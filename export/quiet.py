"""Keeps the export command lines' output their own.

TensorFlow 2.21 logs through absl before `absl::InitializeLog()`, which
writes every line to stderr whatever TF_CPP_MIN_LOG_LEVEL says: importing it
prints 6-7 C++ lines (oneDNN, "Could not find cuda drivers", CPU features),
and the first device query logs a cuInit error on machines without a GPU.
`import_tensorflow` does that import and that query with file descriptor 2
pointed at a temporary file, and replays the file only when the import
fails, or always with `-v` (`verbose`). Python-side, TensorFlow's and absl's
loggers are set to errors only, which hides the "unsaved custom gradients"
warning that every re-load of a jax2tf export prints (the verification step
re-loads each export).

The command lines parse their arguments before calling this, so `--help`
never pays for (or prints) a TensorFlow import. serving/ has its own copy of
the idea (it may not import export/).

It also leaves Keras out of the import, as the server does: TensorFlow's
__init__ imports Keras 3 (and scikit-learn) eagerly unless
TF_USE_LEGACY_KERAS asks for tf_keras; with tf_keras absent it goes on
without either, 1.6-2.1 s sooner. Nothing here uses `tf.keras`; fine-tuning
imports Keras 3 itself.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import tempfile
from types import ModuleType
from typing import Iterator

VERBOSE_HELP = "show TensorFlow's and JAX's own log lines"


@contextlib.contextmanager
def _stderr_held(hold: bool) -> Iterator[None]:
  """Runs the block with fd 2 in a temporary file; replays it on an error."""
  if not hold:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      yield
    except BaseException:
      os.dup2(saved, 2)
      held.seek(0)
      sys.stderr.write(held.read().decode("utf-8", "replace"))
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def import_tensorflow(verbose: bool = False) -> ModuleType:
  """Imports TensorFlow (and finds its devices) without its C++ start-up lines."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "2")
  if "tensorflow" not in sys.modules and importlib.util.find_spec("tf_keras") is None:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
  with _stderr_held(not verbose):
    import tensorflow as tf
    tf.config.list_physical_devices()
  from absl import logging as absl_logging  # TensorFlow's own dependency
  tf.get_logger().setLevel(logging.INFO if verbose else logging.ERROR)
  absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.ERROR)
  return tf
