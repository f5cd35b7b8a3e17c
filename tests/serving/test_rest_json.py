"""REST's JSON codec (serving/rest_json.py) against TF Serving's rules in
util/json_tensor.cc, without a server: what each body becomes as request
protos, which error text each bad one gets, and how responses are written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2, predict_pb2, regression_pb2

from serving import rest_json
from serving.errors import ServingError

FLOAT, UINT8, STRING, INT64 = (types_pb2.DT_FLOAT, types_pb2.DT_UINT8, types_pb2.DT_STRING,
                               types_pb2.DT_INT64)


def _predict(doc: object, **dtypes: int) -> tuple[rest_json.Format, dict[str, np.ndarray]]:
  infos = {k: meta_graph_pb2.TensorInfo(dtype=v) for k, v in dtypes.items()}
  request = predict_pb2.PredictRequest()
  body = json.dumps(doc).encode() if not isinstance(doc, bytes) else doc
  fmt = rest_json.fill_predict_request(rest_json.parse(body), lambda name: infos, request,
                                       may_have_bools=b"true" in body or b"false" in body)
  return fmt, {k: tf.make_ndarray(v) for k, v in request.inputs.items()}


def test_row_and_columnar_inputs():
  fmt, arrays = _predict({"instances": [[1, 2.5], [3, 4]]}, x=FLOAT)
  assert fmt is rest_json.Format.ROW and arrays["x"].dtype == np.float32
  np.testing.assert_array_equal(arrays["x"], [[1, 2.5], [3, 4]])
  fmt, arrays = _predict({"inputs": {"a": [[1, 2]], "s": [{"b64": "aGk="}, "yo"]}},
                         a=UINT8, s=STRING)
  assert fmt is rest_json.Format.COLUMNAR and arrays["a"].dtype == np.uint8
  assert arrays["s"].tolist() == [b"hi", b"yo"]
  _, arrays = _predict({"instances": [{"a": 1, "s": "x"}, {"a": 2, "s": "y"}]},
                       a=UINT8, s=STRING)
  assert arrays["a"].tolist() == [1, 2] and arrays["s"].tolist() == [b"x", b"y"]


def test_unpadded_base64_is_accepted():
  _, arrays = _predict({"instances": [{"b64": "aGk"}, {"b64": "aGk="}]}, s=STRING)
  assert arrays["s"].tolist() == [b"hi", b"hi"]


def test_extra_keys_in_an_inputs_object_are_ignored():
  # json_tensor.cc: FillTensorMapFromInputsMap looks up the signature's names only.
  _, arrays = _predict({"inputs": {"x": [1.0], "unused": "anything"}}, x=FLOAT)
  assert list(arrays) == ["x"]


def test_integers_are_narrowed_as_tf_serving_does():
  # AddValueToTensor accepts any int32 for uint8 (IsInt); the tensor keeps the low byte.
  _, arrays = _predict({"inputs": [1, 300]}, x=UINT8)
  assert arrays["x"].tolist() == [1, 44]


@pytest.mark.parametrize("doc, dtype, message", [
    ({"instances": [[1, 2], [3]]}, FLOAT, "Failed to process element: 1 of 'instances' list. "
     "Error: INVALID_ARGUMENT: Expecting tensor size: 2 but got: 1"),
    ({"instances": [[1, 2], [[3, 4]]]}, FLOAT, "Failed to process element: 1 of 'instances' "
     "list. Error: INVALID_ARGUMENT: Expecting shape [2] but got: [1,2]"),
    ({"instances": [[1, True]]}, FLOAT, "Failed to process element: 0 of 'instances' list. "
     "Error: INVALID_ARGUMENT: JSON Value: true Type: True is not of expected type: float"),
    ({"instances": [1.5]}, UINT8, "JSON Value: 1.5 Type: Number is not of expected type: uint8"),
    ({"instances": [{"x": 1, "y": 2}]}, FLOAT, "Failed to process element: 0 key: y of "
     "'instances' list. Error: INVALID_ARGUMENT: JSON object: does not have named input: y"),
    ({"inputs": [[1, 2], [3]]}, FLOAT, "Encountered list at unexpected size: 1 at level: 1 "
     "expected size: 2"),
    ({"inputs": [2**63]}, INT64, "is not of expected type: int64"),
    ({"inputs": {"y": [1]}}, FLOAT, "Missing named input: x in 'inputs' object."),
    ({"instances": []}, FLOAT, "No values in 'instances' array"),
    ({"instances": [1], "inputs": [1]}, FLOAT, "expecting only one of 'inputs' or 'instances'"),
    ({"instances": [{"b64": "%%%"}]}, STRING, "Unable to base64 decode"),
    ({"signature_name": 1, "inputs": [1]}, FLOAT, "'signature_name' key must be a string"),
])
def test_input_errors_carry_tf_servings_text(doc, dtype, message):
  with pytest.raises(ServingError) as info:
    _predict(doc, x=dtype)
  assert message in info.value.message and info.value.http_status == 400


@pytest.mark.parametrize("body, message", [
    (b"", "The document is empty"),
    (b"[1]", "Is not object"),
    (b'{"a": [1,', "JSON Parse error"),
    (b'{"a": "\\udc00"}', "The surrogate pair in string is invalid."),
    (b'{"a":' + b"[" * 100000 + b"]" * 100000 + b"}", "nested too deeply"),
    (b'{"a": "\xff"}', "Invalid encoding"),
])
def test_unparsable_bodies(body, message):
  with pytest.raises(ServingError, match=message) as info:
    rest_json.parse(body)
  assert info.value.http_status == 400


def test_values_in_messages_are_cut():
  with pytest.raises(ServingError) as info:
    _predict({"instances": [["s" * 100000]]}, x=FLOAT)
  assert len(info.value.message) < 1000
  deep = "[" * 500 + "1" + "]" * 500
  assert len(rest_json.debug_string(json.loads(deep))) < 300


def _response(**outputs: np.ndarray) -> predict_pb2.PredictResponse:
  response = predict_pb2.PredictResponse()
  for name, value in outputs.items():
    response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
  return response


def test_outputs_are_written_as_tf_serving_writes_them():
  response = _response(scores=np.array([[0.1, 1 / 3, 2.0]], np.float32),
                       label_bytes=np.array([b"\xff"], dtype=object),
                       label=np.array([b"cat"], dtype=object))
  row = rest_json.predict_response(response, rest_json.Format.ROW)
  # WriteDecimal: %.6g unless that does not read back, then 9 digits; ".0" on whole numbers.
  assert row == (b'{"predictions":[{"label":"cat","label_bytes":{"b64":"/w=="},'
                 b'"scores":[0.1,0.333333343,2.0]}]}')
  columnar = rest_json.predict_response(_response(y=np.array([1, 2], np.int32)),
                                        rest_json.Format.COLUMNAR)
  assert columnar == b'{"outputs":[1,2]}'
  special = rest_json.predict_response(
      _response(y=np.array([np.nan, np.inf, 1e6], np.float32)), rest_json.Format.COLUMNAR)
  assert special == b'{"outputs":[NaN,Infinity,1e+06]}'
  with pytest.raises(ServingError, match="inconsistent batch size"):
    rest_json.predict_response(_response(a=np.zeros(2), b=np.zeros(3)), rest_json.Format.ROW)


def test_classify_and_regress_bodies_and_results():
  request = classification_pb2.ClassificationRequest()
  rest_json.fill_example_request({"context": {"c": "ctx"}, "examples": [
      {"x": [1.5, 2.0], "n": 3, "b": {"b64": "aGk"}}]}, request)
  example = request.input.example_list_with_context.examples[0].features.feature
  assert list(example["x"].float_list.value) == [1.5, 2.0]
  assert list(example["n"].int64_list.value) == [3]
  assert list(example["b"].bytes_list.value) == [b"hi"]
  with pytest.raises(ServingError, match="Unexpected element type in feature: x expecting "
                     "type: float"):
    rest_json.fill_example_request({"examples": [{"x": [1.5, "a"]}]},
                                   regression_pb2.RegressionRequest())
  result = classification_pb2.ClassificationResult()
  result.classifications.add().classes.add(label="a", score=0.5)
  assert rest_json.classification_response(result) == b'{"results":[[["a",0.5]]]}'
