"""TF Serving's own test models, rebuilt here from what
tensorflow_serving/servables/tensorflow/testdata/saved_model_half_plus_two.py
computes (no files copied): y = a*x + b with a = 0.5, b = 2, and y2 = a*x + c,
y3 = a*x2 + c with c = 3, as a TF1 graph (SavedModelBuilder, assets and a main
op) and as a native TF2 module whose every signature has method_name
"tensorflow/serving/predict".  half_plus_three is the TF1 graph with b = 3.

TF Serving's own tests (model_servers/tensorflow_model_server_test.py)
expect, for x = 2: Predict 3.0 (4.0 for half_plus_three), Classify and
Regress on `classify_x_to_y` / `regress_x_to_y` 3.0, and REST
{"instances": [2.0, 3.0, 4.0]} -> {"predictions": [3.0, 3.5, 4.0]}.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

FEATURES = {"x": ([1], None), "x2": ([1], [0.0])}


def _feature_spec(tf):
  return {name: tf.io.FixedLenFeature(shape, tf.float32, default_value=default)
          for name, (shape, default) in FEATURES.items()}


def write_half_plus_two_tf1(path: str | os.PathLike, b: float = 2.0) -> Path:
  """The TF1 half_plus_two (half_plus_three with b=3): `serving_default`
  (predict x -> y, x an Identity of the parsed examples, shape [-1, 1]),
  `regress_x_to_y`, `regress_x_to_y2`, `regress_x2_to_y3`,
  `classify_x_to_y`."""
  import tensorflow as tf
  v1 = tf.compat.v1
  path = Path(path)
  utils = v1.saved_model.signature_def_utils
  info = v1.saved_model.utils.build_tensor_info
  consts = v1.saved_model.signature_constants
  with tf.Graph().as_default():
    a = v1.Variable(0.5, name="a")
    b_var = v1.Variable(b, name="b")
    c = v1.Variable(3.0, name="c")
    serialized = v1.placeholder(tf.string, name="tf_example", shape=[None])
    parsed = v1.io.parse_example(serialized, _feature_spec(tf))
    x = tf.identity(parsed["x"], name="x")
    y = tf.identity(a * x + b_var, name="y")
    y2 = tf.identity(a * x + c, name="y2")
    x2 = tf.identity(parsed["x2"], name="x2")
    y3 = tf.identity(v1.Variable(0.5, name="a2") * x2 + v1.Variable(3.0, name="c2"), name="y3")
    asset = Path(tempfile.mkdtemp()) / "foo.txt"     # the builder copies it into assets/
    asset.write_text("asset-file-contents")
    asset_path = tf.constant(str(asset))
    v1.add_to_collection(v1.GraphKeys.ASSET_FILEPATHS, asset_path)
    filename = v1.Variable("foo.txt", name="filename_tensor", trainable=False, collections=[])
    assign_filename = filename.assign("foo.txt")

    def regression(inputs, outputs):
      return utils.build_signature_def({consts.REGRESS_INPUTS: info(inputs)},
                                       {consts.REGRESS_OUTPUTS: info(outputs)},
                                       consts.REGRESS_METHOD_NAME)
    signatures = {
        "regress_x_to_y": regression(serialized, y),
        "regress_x_to_y2": regression(serialized, y2),
        "regress_x2_to_y3": regression(x2, y3),
        "classify_x_to_y": utils.build_signature_def(
            {consts.CLASSIFY_INPUTS: info(serialized)},
            {consts.CLASSIFY_OUTPUT_SCORES: info(y)}, consts.CLASSIFY_METHOD_NAME),
        consts.DEFAULT_SERVING_SIGNATURE_DEF_KEY: utils.build_signature_def(
            {"x": info(x)}, {"y": info(y)}, consts.PREDICT_METHOD_NAME),
    }
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      builder = v1.saved_model.Builder(str(path))
      builder.add_meta_graph_and_variables(
          sess, [v1.saved_model.tag_constants.SERVING], signature_def_map=signatures,
          assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS),
          main_op=tf.group(assign_filename))
      builder.save()
  return path


def write_half_plus_two_tf2(path: str | os.PathLike) -> Path:
  """The native TF2 half_plus_two (HalfPlusTwoModel): `serving_default`
  (x [1] -> y), regress/classify signatures on serialized examples and on
  float `inputs`, all with method_name predict."""
  import tensorflow as tf

  spec = _feature_spec(tf)

  class HalfPlusTwo(tf.Module):

    def __init__(self):
      super().__init__()
      self.a = tf.Variable(0.5, name="a")
      self.b = tf.Variable(2.0, name="b")
      self.c = tf.Variable(3.0, name="c")

    def compute(self, x, inc):
      return self.a * x + inc

    @tf.function(input_signature=[tf.TensorSpec([1], tf.float32)])
    def predict(self, x):
      return {"y": self.compute(x, self.b)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress_xy(self, serialized):
      return {"outputs": self.compute(tf.io.parse_example(serialized, spec)["x"], self.b)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress_xy2(self, serialized):
      return {"outputs": self.compute(tf.io.parse_example(serialized, spec)["x"], self.c)}

    @tf.function(input_signature=[tf.TensorSpec([1], tf.float32, name="inputs")])
    def regress_x2y3(self, x2):
      return {"outputs": self.compute(x2, self.c)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify_xy(self, serialized):
      return {"scores": self.compute(tf.io.parse_example(serialized, spec)["x"], self.b)}

    @tf.function(input_signature=[tf.TensorSpec([1], tf.float32, name="inputs")])
    def classify_x2y3(self, x2):
      return {"scores": self.compute(x2, self.c)}

  module = HalfPlusTwo()
  path = Path(path)
  tf.saved_model.save(module, str(path), signatures={
      "serving_default": module.predict, "regress_x_to_y": module.regress_xy,
      "regress_x_to_y2": module.regress_xy2, "regress_x2_to_y3": module.regress_x2y3,
      "classify_x_to_y": module.classify_xy, "classify_x2_to_y3": module.classify_x2y3})
  return path


VERSION = 123
MODELS = ("half_plus_two", "half_plus_two_tf2", "half_plus_three", "half_plus_two_2_versions")


def write_repository(root: str | os.PathLike) -> Path:
  """`root`/<model>/<version> for MODELS, and `root`/models.config serving
  them all (the two-version model with both versions: 123 is
  half_plus_two, 124 half_plus_three)."""
  root = Path(root)
  write_half_plus_two_tf1(root / "half_plus_two" / str(VERSION))
  write_half_plus_two_tf2(root / "half_plus_two_tf2" / str(VERSION))
  write_half_plus_two_tf1(root / "half_plus_three" / str(VERSION), b=3.0)
  write_half_plus_two_tf1(root / "half_plus_two_2_versions" / str(VERSION))
  write_half_plus_two_tf1(root / "half_plus_two_2_versions" / str(VERSION + 1), b=3.0)
  configs = "".join(f"""  config {{
    name: "{name}"
    base_path: "{root / name}"
    model_platform: "tensorflow"
    {'model_version_policy { all {} }' if name.endswith('2_versions') else ''}
  }}
""" for name in MODELS)
  (root / "models.config").write_text(f"model_config_list {{\n{configs}}}\n")
  return root
