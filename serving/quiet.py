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

`python -m serving` also keeps Keras out of its process (`skip_keras`), as
tensorflow_model_server has none: `import tensorflow` imports Keras 3 (and
through it scikit-learn) eagerly, a third of every start-up, serving nothing.
"""

from __future__ import annotations

import importlib.util
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


def skip_keras() -> None:
  """Makes this process's `import tensorflow` leave Keras alone, when
  TensorFlow is not imported yet and the user did not choose a Keras. For
  the server's own process only: it sets an environment variable.

  TensorFlow's __init__ imports `keras.src.optimizers` unless
  TF_USE_LEGACY_KERAS asks for tf_keras; with tf_keras absent it catches the
  ImportError and goes on without either (1.6-2.1 s less CPU per start on
  the build machine). SavedModels load and run through the Session without
  Keras, as in TF Serving's C++ loader.
  """
  if "tensorflow" in sys.modules or importlib.util.find_spec("tf_keras") is not None:
    return
  os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
