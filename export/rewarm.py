"""Publish a copy of a served version whose warmup file covers more batch sizes.

    python -m export.rewarm models/vit_digits/2 --batch-sizes 1,2,4,8,16,32

Why a new version rather than rewriting the file in place: TF Serving (and
the embedded server) replay `assets.extra/tf_serving_warmup_requests` only
while a version loads, so an edit to a served version changes nothing until
the next load, and a server that (re)loads the version while the file is
being replaced can read half of it and fail the load. A new version is
loaded, warmed at every size and only then made AVAILABLE, and the old one
keeps serving until it is (the server's availability-preserving policy):
the coverage takes effect at once, with no restart and no window. Its
files are hard links to the old version's (SavedModel files are never
modified in place), except the new warmup file and the manifest, and it is
renamed into place complete (export/repository.publish). Under a
`specific` version policy or labels, point them at the new version with the
rollout tool as for any new version.

The new requests reuse the version's own: for each missing batch size the
rows of its largest serving_default request are repeated up to that size,
so no knowledge of the model is needed and any TF Serving export works.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from contract.warmup import FILE as WARMUP
from export import quiet
from export.__main__ import batch_size_list
from export.repository import MANIFEST
DEFAULT_SIGNATURE = "serving_default"


def rewarm(version_dir: Path, batch_sizes: tuple[int, ...]) -> Path | None:
  """Publishes `<model_dir>/<next version>` warming `batch_sizes` too; None
  when the version already warms them all (nothing is written)."""
  import numpy as np
  import tensorflow as tf
  from tensorflow_serving.apis import prediction_log_pb2

  from export import repository

  records = [bytes(r.numpy()) for r in tf.data.TFRecordDataset(str(version_dir / WARMUP))] \
      if (version_dir / WARMUP).is_file() else []
  default = []
  for record in records:
    entry = prediction_log_pb2.PredictionLog.FromString(record)
    request = entry.predict_log.request
    if entry.HasField("predict_log") and \
        (request.model_spec.signature_name or DEFAULT_SIGNATURE) == DEFAULT_SIGNATURE:
      size = {t.tensor_shape.dim[0].size for t in request.inputs.values() if t.tensor_shape.dim}
      if len(size) == 1:
        default.append((size.pop(), entry))
  if not default:
    raise ValueError(f"{version_dir / WARMUP}: no serving_default Predict request to "
                     "extend; re-export with --warmup-batch-sizes")
  missing = sorted(set(batch_sizes) - {b for b, _ in default})
  if not missing:
    return None
  largest, template = max(default, key=lambda d: d[0])
  model_dir = version_dir.parent
  version = repository.next_version(model_dir)
  tmp = Path(tempfile.mkdtemp(prefix=f".rewarm-{version}-", dir=model_dir))
  try:
    shutil.copytree(version_dir, tmp, dirs_exist_ok=True, copy_function=_link_or_copy)
    for path in (tmp / WARMUP, tmp / MANIFEST):   # replaced, never written through a link
      if path.exists():
        path.unlink()
    with tf.io.TFRecordWriter(str(tmp / WARMUP)) as writer:
      for record in records:
        writer.write(record)
      for size in missing:
        entry = prediction_log_pb2.PredictionLog()
        entry.CopyFrom(template)
        for tensor in entry.predict_log.request.inputs.values():
          rows = tf.make_ndarray(tensor)
          tiled = np.concatenate([rows] * -(-size // largest))[:size]
          tensor.CopyFrom(tf.make_tensor_proto(tiled))
        writer.write(entry.SerializeToString())
    if (version_dir / MANIFEST).is_file():
      manifest = json.loads((version_dir / MANIFEST).read_text())
      warmed = sorted({b for b, _ in default} | set(missing))
      manifest["warmup"] = {**manifest.get("warmup", {}), "records": len(records) + len(missing),
                            "serving_default_batch_sizes": warmed,
                            "rewarmed_from_version": int(version_dir.name)}
      (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return repository.publish(tmp, model_dir, version)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _link_or_copy(src: str, dst: str) -> None:
  try:
    os.link(src, dst)
  except OSError:
    shutil.copy2(src, dst)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m export.rewarm", description=__doc__.splitlines()[0])
  p.add_argument("version_dir", type=Path, help="a published version, e.g. models/vit_digits/2")
  p.add_argument("--batch-sizes", type=batch_size_list, required=True, metavar="B,B,...",
                 help="serving_default batch sizes the new version must warm")
  p.add_argument("-v", "--verbose", action="store_true", help=quiet.VERBOSE_HELP)
  args = p.parse_args(argv)
  if not (args.version_dir / "saved_model.pb").is_file() or not args.version_dir.name.isdigit():
    p.error(f"{args.version_dir} is not a published version directory")
  quiet.import_tensorflow(args.verbose)
  from export import repository
  try:
    published = rewarm(args.version_dir.resolve(), args.batch_sizes)
  except (ValueError, OSError, repository.PublishError) as e:
    print(f"export.rewarm: error: {e}", file=sys.stderr)
    return 1
  if published is None:
    print(f"{args.version_dir} already warms {','.join(map(str, args.batch_sizes))}; "
          "nothing written", file=sys.stderr)
    return 0
  print(published)
  return 0


if __name__ == "__main__":
  sys.exit(main())
