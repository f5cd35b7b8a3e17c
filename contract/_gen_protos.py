"""Writes contract/tf_serving_protos.binpb: the TF Serving API protos, without TF.

The generated `tensorflow_serving.apis.*_pb2` modules import
`tensorflow.core.*_pb2`, which imports all of TensorFlow (seconds and hundreds
of MB) just to define a handful of messages. The messages themselves are only
descriptors, so this script (run once, where TensorFlow is installed) collects
the FileDescriptorProtos of the services the clients call, with all their
dependencies in dependency order, into one FileDescriptorSet that ships with
the package. `contract.protos` loads it into a private descriptor pool.

It is also the one place that declares the messages tensorflow_model_server
reads but the wheel does not ship (`MISSING_FROM_WHEEL`: batching, monitoring
and SSL configs): they are written into the same file, so the embedded
server (deploy/config.py, serving/tls.py) and the deployment tests take them
from `contract.protos` like every other message.

    python -m contract._gen_protos            # rewrite the shipped file
    python -m contract._gen_protos --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

OUTPUT = Path(__file__).with_name("tf_serving_protos.binpb")

# The top-level .proto files whose messages the clients use; everything they
# import comes along.
ROOTS = (
    "tensorflow_serving/apis/prediction_service.proto",
    "tensorflow_serving/apis/model_service.proto",
    "grpc_health/v1/health.proto",  # is_server_live (--enable_grpc_healthcheck_service)
)

# File -> message -> fields (name, number, type), with TF Serving's names,
# numbers and types from the .proto file named. A type is a scalar ("bool",
# "string"), "repeated int64", or a message's full name.
_I64, _STR, _BOOL = (".google.protobuf.Int64Value", ".google.protobuf.StringValue",
                     ".google.protobuf.BoolValue")
MISSING_FROM_WHEEL: dict[str, dict[str, list[tuple[str, int, str]]]] = {
    "tensorflow_serving/servables/tensorflow/session_bundle_config.proto": {
        "BatchingParameters": [
            ("max_batch_size", 1, _I64), ("batch_timeout_micros", 2, _I64),
            ("max_enqueued_batches", 3, _I64), ("num_batch_threads", 4, _I64),
            ("thread_pool_name", 5, _STR), ("allowed_batch_sizes", 6, "repeated int64"),
            ("pad_variable_length_inputs", 7, "bool"),
            ("enable_large_batch_splitting", 8, _BOOL),
            ("max_execution_batch_size", 9, _I64)]},
    "tensorflow_serving/config/monitoring_config.proto": {
        "PrometheusConfig": [("enable", 1, "bool"), ("path", 2, "string")],
        "MonitoringConfig": [("prometheus_config", 1, ".tensorflow.serving.PrometheusConfig")]},
    "tensorflow_serving/config/ssl_config.proto": {
        "SSLConfig": [("server_key", 1, "string"), ("server_cert", 2, "string"),
                      ("custom_ca", 3, "string"), ("client_verify", 4, "bool")]},
}


def _declared_file(name: str, messages: dict[str, list[tuple[str, int, str]]]
                   ) -> descriptor_pb2.FileDescriptorProto:
  """One MISSING_FROM_WHEEL file as a FileDescriptorProto."""
  field_type = descriptor_pb2.FieldDescriptorProto
  scalars = {"bool": field_type.TYPE_BOOL, "string": field_type.TYPE_STRING,
             "int64": field_type.TYPE_INT64}
  file = descriptor_pb2.FileDescriptorProto(
      name=name, package="tensorflow.serving", syntax="proto3",
      dependency=["google/protobuf/wrappers.proto"])
  for message_name, fields in messages.items():
    message = file.message_type.add(name=message_name)
    for field_name, number, kind in fields:
      field = message.field.add(name=field_name, number=number,
                                label=field_type.LABEL_OPTIONAL)
      if kind.startswith("repeated "):
        kind = kind.split()[1]
        field.label = field_type.LABEL_REPEATED
      if kind in scalars:
        field.type = scalars[kind]
      else:
        field.type, field.type_name = field_type.TYPE_MESSAGE, kind
  return file


def build() -> bytes:
  """The serialized FileDescriptorSet, from the installed wheels."""
  # Importing the official modules registers their files in the default pool;
  # this is the one place that pays for TensorFlow.
  import tensorflow_serving.apis.model_service_pb2  # noqa: F401
  import tensorflow_serving.apis.prediction_service_pb2  # noqa: F401
  from google.protobuf import wrappers_pb2  # noqa: F401  (MISSING_FROM_WHEEL uses it)
  from grpc_health.v1 import health_pb2  # noqa: F401
  from google.protobuf import descriptor_pool

  pool = descriptor_pool.Default()
  ordered: list[str] = []
  seen: set[str] = set()

  def visit(name: str) -> None:
    if name in seen:
      return
    seen.add(name)
    for dep in pool.FindFileByName(name).dependencies:
      visit(dep.name)
    ordered.append(name)

  for root in (*ROOTS, "google/protobuf/wrappers.proto"):
    visit(root)
  fds = descriptor_pb2.FileDescriptorSet()
  for name in ordered:
    pool.FindFileByName(name).CopyToProto(fds.file.add())
  for name, messages in MISSING_FROM_WHEEL.items():
    fds.file.append(_declared_file(name, messages))
  return fds.SerializeToString(deterministic=True)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="python -m contract._gen_protos",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--check", action="store_true",
                      help="compare with the shipped file instead of writing it")
  args = parser.parse_args(argv)
  data = build()
  if args.check:
    current = OUTPUT.read_bytes() if OUTPUT.exists() else b""
    if current != data:
      print(f"{OUTPUT} is out of date; run python -m contract._gen_protos", file=sys.stderr)
      return 1
    print(f"{OUTPUT} is up to date")
    return 0
  OUTPUT.write_bytes(data)
  print(f"wrote {OUTPUT} ({len(data)} bytes)")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
