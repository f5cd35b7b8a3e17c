"""The TF-free protocol messages are TF Serving's: same bytes both ways, the
shipped descriptor set is current, and `import clients` stays TF-free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2,
                                     predict_pb2)

from clients import results, tensors
from contract import _gen_protos, protos

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_descriptor_set_matches_installed_wheels():
  assert _gen_protos.build() == _gen_protos.OUTPUT.read_bytes(), (
      "run python -m contract._gen_protos")


def test_import_clients_does_not_import_tensorflow():
  code = ("import sys, clients, clients.__main__; "
          "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
          "('tensorflow', 'tensorflow_serving', 'jax', 'export', 'serving', 'PIL', 'tqdm')); "
          "print(heavy)")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                       capture_output=True, text=True).stdout
  assert out.strip() == "[]"


def test_predict_request_bytes_parse_with_official_classes():
  request = protos.PredictRequest()
  request.model_spec.name = "vit"
  request.model_spec.version_label = "canary"
  request.model_spec.signature_name = "predict_bytes"
  images = np.random.default_rng(0).uniform(-1, 1, (2, 4, 4, 3)).astype(np.float32)
  request.inputs["images"].CopyFrom(tensors.make_tensor_proto(images))
  request.inputs["image_bytes"].CopyFrom(tensors.make_tensor_proto([b"\x89PNG", "caf\u00e9"]))
  request.output_filter.append("logits")

  official = predict_pb2.PredictRequest.FromString(request.SerializeToString())
  assert official.model_spec.version_label == "canary"
  assert official.model_spec.signature_name == "predict_bytes"
  assert list(official.output_filter) == ["logits"]
  np.testing.assert_array_equal(tf.make_ndarray(official.inputs["images"]), images)
  assert official.inputs["images"].tensor_content  # raw bytes, not float_val
  assert len(official.inputs["images"].float_val) == 0
  assert list(tf.make_ndarray(official.inputs["image_bytes"])) == [b"\x89PNG", "caf\u00e9".encode()]


def test_official_predict_response_parses_here():
  official = predict_pb2.PredictResponse()
  official.model_spec.name = "vit"
  official.model_spec.version.value = 7
  logits = np.arange(6, dtype=np.float32).reshape(2, 3)
  official.outputs["logits"].CopyFrom(tf.make_tensor_proto(logits))
  official.outputs["top_k_classes"].CopyFrom(tf.make_tensor_proto(np.array([[2], [0]], np.int32)))
  official.outputs["top_k_labels"].CopyFrom(tf.make_tensor_proto(np.array([[b"c"], [b"a"]])))

  response = protos.PredictResponse.FromString(official.SerializeToString())
  assert response.model_spec.version.value == 7
  np.testing.assert_array_equal(tensors.make_ndarray(response.outputs["logits"]), logits)
  classes = tensors.make_ndarray(response.outputs["top_k_classes"])
  assert classes.dtype == np.int32 and classes.tolist() == [[2], [0]]
  assert tensors.make_ndarray(response.outputs["top_k_labels"]).tolist() == [[b"c"], [b"a"]]


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "int8", "int16", "int32",
                                   "int64", "uint8", "uint16", "uint32", "uint64", "bool"])
def test_tensors_agree_with_tensorflow_for_every_numeric_dtype(dtype):
  array = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
  ours = tensors.make_tensor_proto(array)
  theirs = tf.make_tensor_proto(array)
  assert ours.dtype == theirs.dtype
  # TF reads ours, we read TF's (which may use the repeated *_val fields).
  np.testing.assert_array_equal(
      tf.make_ndarray(type(theirs).FromString(ours.SerializeToString())), array)
  decoded = tensors.make_ndarray(protos.TensorProto.FromString(theirs.SerializeToString()))
  assert decoded.dtype == array.dtype
  np.testing.assert_array_equal(decoded, array)


def test_repeated_fields_and_single_value_fill_decode_like_tensorflow():
  official = tf.make_tensor_proto(0.0, shape=[2, 2])  # one float_val fills all four
  official.float_val[:] = [1.5]
  ours = protos.TensorProto.FromString(official.SerializeToString())
  np.testing.assert_array_equal(tensors.make_ndarray(ours), tf.make_ndarray(official))
  half = tf.make_tensor_proto(np.array([1.5, -2.0], np.float16))
  half.ClearField("tensor_content")
  half.half_val[:] = np.array([1.5, -2.0], np.float16).view(np.uint16).tolist()
  ours = protos.TensorProto.FromString(half.SerializeToString())
  np.testing.assert_array_equal(tensors.make_ndarray(ours), [1.5, -2.0])


def test_metadata_and_status_from_official_responses():
  from tensorflow.core.protobuf import meta_graph_pb2
  signatures = get_model_metadata_pb2.SignatureDefMap()
  sig = signatures.signature_def["serving_default"]
  sig.method_name = "tensorflow/serving/predict"
  images = sig.inputs["images"]
  images.dtype = tf.float32.as_datatype_enum
  for size in (-1, 32, 32, 3):
    images.tensor_shape.dim.add(size=size)
  sig.outputs["logits"].CopyFrom(meta_graph_pb2.TensorInfo(dtype=tf.float32.as_datatype_enum))
  official = get_model_metadata_pb2.GetModelMetadataResponse(
      model_spec=model_pb2.ModelSpec(name="vit"))
  official.model_spec.version.value = 3
  official.metadata["signature_def"].Pack(signatures)

  response = protos.GetModelMetadataResponse.FromString(official.SerializeToString())
  unpacked = protos.SignatureDefMap()
  assert response.metadata["signature_def"].Unpack(unpacked)
  metadata = results.metadata_from_proto("vit", 3, unpacked)
  assert metadata.signatures["serving_default"].inputs["images"] == results.TensorInfo(
      "DT_FLOAT", (None, 32, 32, 3))
  assert metadata.signatures["serving_default"].outputs["logits"].shape == ()
  assert metadata.image_size() == 32

  status = get_model_status_pb2.GetModelStatusResponse()
  status.model_version_status.add(version=1, state=30)
  failed = status.model_version_status.add(version=2, state=50)
  failed.status.error_code = 3
  failed.status.error_message = "bad graph"
  parsed = results.status_from_proto(
      protos.GetModelStatusResponse.FromString(status.SerializeToString()))
  assert parsed == [results.VersionStatus(2, "END", "INVALID_ARGUMENT", "bad graph"),
                    results.VersionStatus(1, "AVAILABLE", "OK", "")]


def test_top_k_decoding_and_limits():
  prediction = results.Prediction({
      "top_k_classes": np.array([[3, 1], [0, 2]], np.int32),
      "top_k_scores": np.array([[0.7, 0.2], [0.6, 0.3]], np.float32),
      "top_k_labels": np.array([[b"cat", b"dog"], [b"ant", b"bee"]], object)}, 4)
  best = prediction.top_k(1)
  assert best == [[results.TopK(3, "cat", pytest.approx(0.7))],
                  [results.TopK(0, "ant", pytest.approx(0.6))]]
  assert [t.label for t in prediction.top_k()[1]] == ["ant", "bee"]
  with pytest.raises(ValueError, match="top-3 asked, the model returns its top-2"):
    prediction.top_k(3)
  ranked = results.Prediction({"probabilities": np.array([[0.1, 0.6, 0.3]])}, None).top_k(2)
  assert [(t.class_id, t.label) for t in ranked[0]] == [(1, "1"), (2, "2")]
