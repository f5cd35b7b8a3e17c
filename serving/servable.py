"""One loaded model version: a SavedModel's MetaGraph in a TensorFlow Session.

tensorflow_model_server loads every SavedModel, TF1 and TF2 alike, with the
C++ SavedModel loader into a Session and runs a request by feeding the
signature's input tensor names and fetching its output tensor names; the
graph alone decides which shapes it accepts (TF Serving's half_plus_two,
declared [-1, 1], answers a request of shape [3]).  `tf.compat.v1`'s
`saved_model.loader.load` is that same C++ loader, so each version gets its
own `tf.Graph` and `Session` here and is run the same way, through
`Session.make_callable`-style callables (`CallableOptions`) that skip the
Python feed checks of `Session.run`: those convert dtypes and compare
shapes against the placeholders, which the C++ Session does not.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2

import contract
from serving.config import BatchingOptions, BatchingParameters, parse_text_file
from serving.errors import Code, ServingError, from_tf_error

log = logging.getLogger("serving")

DEFAULT_SIGNATURE = contract.DEFAULT.name  # "serving_default", TF Serving's default key
# servables/tensorflow/bundle_factory_util.cc: kBatchingParamsFilename.
BATCHING_PARAMS_FILE = "batching_params.pbtxt"


def disable_xla_compilation() -> None:
  """What tensorflow_model_server does without --xla_cpu_compilation_enabled
  or --xla_gpu_compilation_enabled (main.cc): tensorflow::DisableXlaCompilation().

  From then on every XLA compilation in this process fails with INTERNAL
  "XLA compilation disabled": a jax2tf export (XlaCallModule, compiled at its
  first run) fails its warmup, and so its load, or its first request; graphs
  without XLA clusters (TF Serving's half_plus_two) are unaffected.  The
  function has no Python binding, but libtensorflow_cc exports it, so the
  embedded server calls TensorFlow's own switch rather than imitating it.
  """
  library = ctypes.CDLL(os.path.join(os.path.dirname(tf.__file__), "libtensorflow_cc.so.2"))
  library._ZN10tensorflow21DisableXlaCompilationEv()   # tensorflow::DisableXlaCompilation()


class Servable:
  """A loaded SavedModel version.  Construct with `Servable.load`."""

  def __init__(self, name: str, version: int, path: Path,
               meta_graph: meta_graph_pb2.MetaGraphDef, session: tf.compat.v1.Session,
               batching: BatchingOptions | None = None):
    self.name = name
    self.version = version
    self.path = path
    self.meta_graph = meta_graph
    self.batching = batching      # from batching_params.pbtxt, when read
    self._session = session
    self._callables: dict[tuple[tuple[str, ...], tuple[str, ...]], object] = {}
    self._lock = threading.Lock()

  @classmethod
  def load(cls, name: str, version: int, path: str | Path,
           tags: Sequence[str] = ("serve",), *,
           read_batching_params: bool = False) -> "Servable":
    """Loads `path` into a new Session; any failure is the version's status.

    `read_batching_params`: --enable_per_model_batching_parameters; a
    version's batching_params.pbtxt is read at load, so a bad one fails the
    load (servables/tensorflow/bundle_factory_util.cc GetPerModelBatchingParams).
    """
    path = Path(path)
    if not (path / "saved_model.pb").exists() and not (path / "saved_model.pbtxt").exists():
      raise ServingError(Code.NOT_FOUND,
                         f"Could not find SavedModel .pb or .pbtxt at supplied export "
                         f"directory path: {path}")
    batching = None
    if read_batching_params and (path / BATCHING_PARAMS_FILE).exists():
      batching = BatchingOptions.from_proto(
          parse_text_file(path / BATCHING_PARAMS_FILE, BatchingParameters()))
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    try:
      meta_graph = tf.compat.v1.saved_model.loader.load(session, list(tags), str(path))
    except Exception as e:  # noqa: BLE001  (any load failure is the version's status)
      session.close()
      status = from_tf_error(e)
      raise ServingError(status.code, f"Failed to load SavedModel at {path}: "
                         f"{status.message}") from None
    return cls(name, version, path, meta_graph, session, batching)

  @property
  def signature_defs(self) -> Mapping[str, meta_graph_pb2.SignatureDef]:
    return self.meta_graph.signature_def

  def run(self, feeds: Mapping[str, np.ndarray], fetches: Sequence[str]) -> dict[str, np.ndarray]:
    """Session::Run: {tensor name: value} fed, {fetched tensor name: value}
    back; graph errors become TF Serving's statuses (bad input that the graph
    rejects is INVALID_ARGUMENT)."""
    names = tuple(feeds)
    fetches = tuple(fetches)
    try:
      run = self._callable(names, fetches)
      values = run(*(feeds[n] for n in names))
    except ServingError:
      raise
    except Exception as e:  # noqa: BLE001  (bad input must never crash the server)
      raise from_tf_error(e) from None
    return dict(zip(fetches, values))

  def _callable(self, feeds: tuple[str, ...], fetches: tuple[str, ...]):
    """One callable per (feeds, fetches): built once, then only a C call."""
    key = (feeds, fetches)
    run = self._callables.get(key)
    if run is None:
      with self._lock:
        run = self._callables.get(key)
        if run is None:
          options = config_pb2.CallableOptions(feed=feeds, fetch=fetches)
          # The public Session.make_callable routes feeds through Session.run's
          # Python checks; this is the C++ MakeCallable it wraps.
          run = self._session._make_callable_from_options(options)  # noqa: SLF001
          self._callables[key] = run
    return run


__all__ = ["BATCHING_PARAMS_FILE", "DEFAULT_SIGNATURE", "Servable", "disable_xla_compilation"]
