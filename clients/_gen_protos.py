"""Writes clients/tf_serving_protos.binpb: the TF Serving API protos, without TF.

The generated `tensorflow_serving.apis.*_pb2` modules import
`tensorflow.core.*_pb2`, which imports all of TensorFlow (seconds and hundreds
of MB) just to define a handful of messages. The messages themselves are only
descriptors, so this script (run once, where TensorFlow is installed) collects
the FileDescriptorProtos of the services the clients call, with all their
dependencies in dependency order, into one FileDescriptorSet that ships with
the package. `clients.protos` loads it into a private descriptor pool.

    python -m clients._gen_protos            # rewrite the shipped file
    python -m clients._gen_protos --check    # exit 1 if it is out of date
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


def build() -> bytes:
  """The serialized FileDescriptorSet, from the installed wheels."""
  # Importing the official modules registers their files in the default pool;
  # this is the one place that pays for TensorFlow.
  import tensorflow_serving.apis.model_service_pb2  # noqa: F401
  import tensorflow_serving.apis.prediction_service_pb2  # noqa: F401
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

  for root in ROOTS:
    visit(root)
  fds = descriptor_pb2.FileDescriptorSet()
  for name in ordered:
    pool.FindFileByName(name).CopyToProto(fds.file.add())
  return fds.SerializeToString(deterministic=True)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="python -m clients._gen_protos",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--check", action="store_true",
                      help="compare with the shipped file instead of writing it")
  args = parser.parse_args(argv)
  data = build()
  if args.check:
    current = OUTPUT.read_bytes() if OUTPUT.exists() else b""
    if current != data:
      print(f"{OUTPUT} is out of date; run python -m clients._gen_protos", file=sys.stderr)
      return 1
    print(f"{OUTPUT} is up to date")
    return 0
  OUTPUT.write_bytes(data)
  print(f"wrote {OUTPUT} ({len(data)} bytes)")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
