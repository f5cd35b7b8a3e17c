"""Reusable test helpers for anything that talks to a model server.

Tiny SavedModels built with plain TensorFlow (so the serving tests do not
depend on the exporter, and every TF Serving feature can be exercised in well
under a second per model) and a repository of them. The clients and A/B
tests reuse these: import them from `tests.support.tiny_models`. `free_port` and
`ServerProcess` (start `python -m serving ...` as a real user would and wait
for the ports it prints) live in `ops.process`, which the benchmarks use
too, and are re-exported here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from ops.process import ServerProcess, free_port  # noqa: F401  (re-exported)
from tests.support.paths import ROOT  # noqa: F401  (re-exported)

IMAGE_SIZE = 8
LABELS = ("cat", "dog", "bird", "fish")


def write_tf2_model(path: str | os.PathLike, *, bias: float = 0.0,
                    warmup: bool = False) -> Path:
  """A TF2 SavedModel with the classifier contract (docs/design.md), at 8x8 px.

  `serving_default` (float `images`), `predict_uint8` (uint8 `images`) and
  `predict_bytes` (encoded `image_bytes`) all return logits, probabilities,
  top-k scores/classes and string labels.  `bias` shifts the logits, so two
  versions give visibly different answers.
  """
  import tensorflow as tf

  rng = np.random.default_rng(0)
  num_classes, k = len(LABELS), 3

  class Tiny(tf.Module):

    def __init__(self):
      super().__init__()
      self.w = tf.Variable(rng.normal(size=(3, num_classes)).astype(np.float32))
      self.b = tf.Variable(np.arange(num_classes, dtype=np.float32) * 0.1 + bias)
      self.labels = tf.constant(LABELS)

    def _heads(self, images):
      logits = tf.reduce_mean(images, axis=[1, 2]) @ self.w + self.b
      probabilities = tf.nn.softmax(logits)
      scores, classes = tf.math.top_k(probabilities, k=k)
      return {"logits": logits, "probabilities": probabilities,
              "top_k_scores": scores, "top_k_classes": classes,
              "top_k_labels": tf.gather(self.labels, classes)}

    @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3],
                                                tf.float32, name="images")])
    def serving_default(self, images):
      return self._heads(images)

    @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3],
                                                tf.uint8, name="images")])
    def predict_uint8(self, images):
      return self._heads(tf.cast(images, tf.float32) / 127.5 - 1.0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def predict_bytes(self, image_bytes):
      def decode(data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image = tf.image.resize(tf.cast(image, tf.float32), [IMAGE_SIZE, IMAGE_SIZE])
        return image / 127.5 - 1.0
      images = tf.map_fn(decode, image_bytes, fn_output_signature=tf.float32)
      return self._heads(images)

  module = Tiny()
  path = Path(path)
  tf.saved_model.save(module, str(path), signatures={
      "serving_default": module.serving_default,
      "predict_uint8": module.predict_uint8,
      "predict_bytes": module.predict_bytes})
  if warmup:
    write_warmup(path, "serving_default",
                 {"images": np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)})
  return path


def write_warmup(path: Path, signature: str, inputs: dict[str, np.ndarray]) -> None:
  """assets.extra/tf_serving_warmup_requests with one PredictionLog."""
  import tensorflow as tf
  from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

  request = predict_pb2.PredictRequest()
  request.model_spec.signature_name = signature
  for key, value in inputs.items():
    request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
  log = prediction_log_pb2.PredictionLog(
      predict_log=prediction_log_pb2.PredictLog(request=request))
  (path / "assets.extra").mkdir(parents=True, exist_ok=True)
  with tf.io.TFRecordWriter(str(path / "assets.extra" / "tf_serving_warmup_requests")) as w:
    w.write(log.SerializeToString())


TF1_WEIGHTS = np.array([[1.0, -1.0, 0.5], [0.5, 2.0, -1.0]], np.float32)
TF1_CLASSES = (b"red", b"green", b"blue")


def write_tf1_model(path: str | os.PathLike) -> Path:
  """A TF1-style (graph + SavedModelBuilder) model with `classify`, `regress`
  (serialized tf.Example input, feature `x`: 2 floats) and `serving_default`
  (predict, float `x` [b, 2] -> `y` [b, 3])."""
  import tensorflow as tf
  v1 = tf.compat.v1
  path = Path(path)
  with tf.Graph().as_default() as graph:
    serialized = v1.placeholder(tf.string, [None], name="tf_example")
    parsed = v1.io.parse_example(serialized, {"x": v1.io.FixedLenFeature([2], tf.float32)})
    x_in = v1.placeholder(tf.float32, [None, 2], name="x")
    w = v1.get_variable("w", initializer=tf.constant(TF1_WEIGHTS))
    scores = tf.nn.softmax(parsed["x"] @ w)
    classes = tf.tile(tf.constant([list(TF1_CLASSES)]), [tf.shape(scores)[0], 1])
    total = tf.reduce_sum(parsed["x"], axis=1)
    y = x_in @ w
    utils = v1.saved_model.signature_def_utils
    classify = utils.classification_signature_def(serialized, classes, scores)
    regress = utils.regression_signature_def(serialized, total)
    predict = utils.predict_signature_def({"x": x_in}, {"y": y})
    with v1.Session(graph=graph) as sess:
      sess.run(v1.global_variables_initializer())
      builder = v1.saved_model.Builder(str(path))
      builder.add_meta_graph_and_variables(
          sess, [v1.saved_model.tag_constants.SERVING],
          signature_def_map={"classify": classify, "regress": regress,
                             "serving_default": predict})
      builder.save()
  return path


def example_bytes(x: Sequence[float]) -> bytes:
  """A serialized tf.Example with float feature `x`."""
  from tensorflow.core.example import example_pb2, feature_pb2
  example = example_pb2.Example()
  example.features.feature["x"].CopyFrom(
      feature_pb2.Feature(float_list=feature_pb2.FloatList(value=list(x))))
  return example.SerializeToString()


TF2_MODEL, TF1_MODEL = "tiny", "tiny_tf1"


def write_repository(root: str | os.PathLike, base_prefix: str | None = None) -> Path:
  """The repository the API tests expect: `tiny` (TF2, versions 1 and 2, label
  `stable` -> 1, `canary` -> 2) and `tiny_tf1` (TF1, version 1), plus
  `models.config`.  `base_prefix` replaces `root` in the config's base paths
  (e.g. "/models" when the directory is mounted into a TF Serving container).
  Deterministic: writing it twice gives the same models."""
  root = Path(root)
  write_tf2_model(root / TF2_MODEL / "1", warmup=True)
  write_tf2_model(root / TF2_MODEL / "2", bias=1.0)
  write_tf1_model(root / TF1_MODEL / "1")
  prefix = base_prefix if base_prefix is not None else str(root)
  (root / "models.config").write_text(f"""model_config_list {{
  config {{
    name: "{TF2_MODEL}"
    base_path: "{prefix}/{TF2_MODEL}"
    model_platform: "tensorflow"
    model_version_policy {{ all {{}} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
  config {{
    name: "{TF1_MODEL}"
    base_path: "{prefix}/{TF1_MODEL}"
    model_platform: "tensorflow"
  }}
}}
""")
  return root


if __name__ == "__main__":
  # python -m tests.support.tiny_models DIR [BASE_PREFIX]: write the test repository
  # (to serve it with a real tensorflow_model_server; see the README).
  print(write_repository(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
