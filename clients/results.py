"""What the clients return: plain Python and numpy, the same for both transports.

Both transports end up with the same protos (REST's JSON parses into them),
so the conversion from protos to these types lives here, once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

import contract
from contract import protos


class TopK(NamedTuple):
  """One of an image's top-k classes."""
  class_id: int
  label: str
  score: float


@dataclasses.dataclass
class Prediction:
  """A Predict result: the output arrays, and which model version answered.

  `model_version` is None when it is unknown (TF Serving's REST predict
  response does not say; see RestClient) or when the rows of a split batch
  were answered by different versions (then `row_versions` tells which).
  `arm` is the routing arm that was chosen, for routed calls.
  """
  outputs: dict[str, np.ndarray]
  model_version: int | None
  row_versions: tuple[int | None, ...] = ()
  arm: str | None = None

  def __getitem__(self, name: str) -> np.ndarray:
    return self.outputs[name]

  def top_k(self, k: int | None = None) -> list[list[TopK]]:
    """Per row, the best k (class id, label, score), best first.

    Reads the model's own `top_k_*` outputs; k may not exceed the k the model
    was exported with. A model without them (but with `probabilities`) is
    ranked here, with the class id as label.
    """
    if "top_k_classes" in self.outputs:
      classes = self.outputs["top_k_classes"]
      scores = self.outputs["top_k_scores"]
      labels = self.outputs.get("top_k_labels")
    elif "probabilities" in self.outputs:
      probabilities = self.outputs["probabilities"]
      classes = np.argsort(-probabilities, axis=1, kind="stable")
      scores = np.take_along_axis(probabilities, classes, axis=1)
      labels = None
    else:
      raise ValueError(f"no top-k or probabilities among outputs {sorted(self.outputs)}")
    available = classes.shape[1]
    k = available if k is None else k
    if not 1 <= k <= available:
      raise ValueError(f"top-{k} asked, the model returns its top-{available}")
    return [[TopK(int(classes[i, j]),
                  _text(labels[i, j]) if labels is not None else str(int(classes[i, j])),
                  float(scores[i, j])) for j in range(k)]
            for i in range(classes.shape[0])]


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  """A signature input or output: dtype name ("DT_FLOAT") and shape (None = any)."""
  dtype: str
  shape: tuple[int | None, ...] | None


@dataclasses.dataclass(frozen=True)
class SignatureInfo:
  inputs: dict[str, TensorInfo]
  outputs: dict[str, TensorInfo]
  method_name: str


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
  """A model version's signatures, as GetModelMetadata reports them."""
  name: str
  version: int | None
  signatures: dict[str, SignatureInfo]

  def image_size(self, signature: str = contract.DEFAULT.name) -> int:
    """The square input size S of the model's [b, S, S, 3] image input."""
    key = contract.BY_NAME.get(signature, contract.DEFAULT).input_key
    try:
      shape = self.signatures[signature].inputs[key].shape
    except KeyError:
      raise ValueError(f"model {self.name} has no `{key}` input in {signature!r}") from None
    if not shape or len(shape) != 4 or shape[1] is None or shape[1] != shape[2]:
      raise ValueError(f"model {self.name}: {signature} images shape {shape} is not [b,S,S,3]")
    return int(shape[1])


@dataclasses.dataclass(frozen=True)
class VersionStatus:
  """One version's state ("AVAILABLE", "LOADING", ...) and error, if any."""
  version: int
  state: str
  error_code: str
  error_message: str


def metadata_from_proto(name: str, version: int | None, signature_map: Any) -> ModelMetadata:
  """ModelMetadata from a tensorflow.serving.SignatureDefMap."""
  return ModelMetadata(name, version, {
      key: SignatureInfo(_tensor_infos(sig.inputs), _tensor_infos(sig.outputs),
                         sig.method_name)
      for key, sig in sorted(signature_map.signature_def.items())})


def status_from_proto(response: Any) -> list[VersionStatus]:
  """VersionStatus per version, newest first, from a GetModelStatusResponse."""
  statuses = [VersionStatus(int(s.version), protos.MODEL_STATES.get(s.state, str(s.state)),
                            protos.ERROR_CODES.get(s.status.error_code, str(s.status.error_code)),
                            s.status.error_message)
              for s in response.model_version_status]
  return sorted(statuses, key=lambda s: -s.version)


def merge(parts: Sequence[Prediction]) -> Prediction:
  """The predictions of consecutive slices of one batch, as one."""
  if len(parts) == 1:
    return parts[0]
  outputs = {name: np.concatenate([p.outputs[name] for p in parts]) for name in parts[0].outputs}
  rows = tuple(v for p in parts for v in p.row_versions)
  versions = {p.model_version for p in parts}
  return Prediction(outputs, versions.pop() if len(versions) == 1 else None, rows)


def _tensor_infos(infos: Mapping[str, Any]) -> dict[str, TensorInfo]:
  return {key: TensorInfo(
      protos.DATA_TYPE_NAMES.get(info.dtype, str(info.dtype)),
      None if info.tensor_shape.unknown_rank
      else tuple(None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim))
          for key, info in sorted(infos.items())}


def _text(value: Any) -> str:
  return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
