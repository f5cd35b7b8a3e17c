"""Reading and updating `models.config` safely, without TensorFlow.

`models.config` is a `tensorflow.serving.ModelServerConfig` text proto (the
file `tensorflow_model_server --model_config_file` reads and may poll). Two
tools write it: the exporter (a new model's entry) and the rollout tool
(version policies and labels). Each write is a read-modify-write of the whole
file, so two writers at once would lose one's change; `update` therefore
serializes writers with an exclusive `flock` on a lock file next to the config
(`.<name>.lock`; the config itself cannot carry the lock because every write
replaces its inode). Readers take no lock: every write goes to a temporary
file in the same directory and is renamed over the config (`os.replace`), so a
reader (or a polling server) sees either the old or the new file, never half
of one.

A rewritten file keeps the old file's permission bits; a new one gets those
the umask gives (0644 under the usual 022), so a server running as another
user can read it. Comment lines at the top of the file are kept; comments
inside the proto body are lost, because the file is written back from the
parsed message (text_format has no comment-preserving writer).

The messages come from `contract.protos`' descriptor set, so this module
works wherever the clients do (the rollout tool, CI jobs, the exporter).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from pathlib import Path
from typing import Any, Callable, Iterator

from google.protobuf import text_format

from contract import protos

ModelServerConfig = protos.message_class("tensorflow.serving.ModelServerConfig")


class ModelConfigError(RuntimeError):
  """models.config cannot be read, is not a model list, or cannot be written."""


def parse(text: str, path: str | os.PathLike = "<text>") -> Any:
  """A ModelServerConfig from text; `path` only names it in errors.

  Only `model_config_list` configs are accepted: a `custom_model_config` has
  no entries that the exporter or rollout tool could edit.
  """
  config = ModelServerConfig()
  try:
    text_format.Parse(text, config)
  except text_format.ParseError as e:
    raise ModelConfigError(f"{path}: not a ModelServerConfig text proto: {e}") from None
  if config.WhichOneof("config") == "custom_model_config":
    raise ModelConfigError(f"{path}: uses custom_model_config; expected model_config_list")
  return config


def read(path: str | os.PathLike) -> Any:
  """The parsed config; an empty one when the file does not exist yet."""
  path = Path(path)
  try:
    text = path.read_text()
  except FileNotFoundError:
    return ModelServerConfig()
  except OSError as e:
    raise ModelConfigError(f"cannot read {path}: {e}") from None
  return parse(text, path)


def leading_comments(text: str) -> str:
  """The comment (and blank) lines before the first proto line, verbatim."""
  lines = []
  for line in text.splitlines(keepends=True):
    stripped = line.strip()
    if stripped and not stripped.startswith("#"):
      break
    lines.append(line)
  return "".join(lines)


def render(config: Any, comments: str = "") -> str:
  """The file text: `comments` (kept from the old file), then the config."""
  if comments and not comments.endswith("\n"):
    comments += "\n"
  return comments + text_format.MessageToString(config)


def entry(config: Any, name: str) -> Any | None:
  """The `config { name: ... }` entry of model `name`, or None."""
  for model in config.model_config_list.config:
    if model.name == name:
      return model
  return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
  """Holds the exclusive writer lock of the config file `path`."""
  lock_path = path.with_name(f".{path.name}.lock")
  try:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
  except OSError as e:
    raise ModelConfigError(f"cannot lock {path}: {e}") from None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)  # closing releases the lock


def _replace(path: Path, text: str) -> None:
  """Writes `text` to `path` through a temporary file and an atomic rename.

  The temporary file is created with mode 0666 so the kernel applies the
  umask (mkstemp's 0600 would make the config unreadable to a server running
  as another user); an existing file's mode is carried over instead.
  """
  tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    if path.exists():
      os.chmod(tmp, path.stat().st_mode & 0o7777)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def update(path: str | os.PathLike, edit: Callable[[Any], None], *,
           after_write: Callable[[Any], None] | None = None) -> bool:
  """Applies `edit` to the current config and writes the result.

  Under the writer lock: reads the file (an empty config when it does not
  exist), calls `edit(config)` to change the message in place, and, when the
  message changed, writes it back atomically with the file's leading
  comments. If `edit` raises, the file is left as it was and the exception
  propagates.

  `after_write(config)`, when given, runs once the file holds the new
  config (also when `edit` changed nothing: it already did), still under
  the lock; if it raises, a file just written gets its old text back (or is
  removed again) and the exception propagates. The rollout tool sends
  the config to the server there: a server polling the file then never
  reads a config older than the one it was just sent.

  Returns:
    True when the file was written, False when `edit` changed nothing.

  Raises:
    ModelConfigError: the file is unreadable, not a model list, or cannot be
      written (e.g. the disk is full); the file is then unchanged.
  """
  path = Path(path)
  with _locked(path):
    try:
      old_text = path.read_text()
    except FileNotFoundError:
      old_text = None
    except OSError as e:
      raise ModelConfigError(f"cannot read {path}: {e}") from None
    config = parse(old_text, path) if old_text is not None else ModelServerConfig()
    before = config.SerializeToString(deterministic=True)
    edit(config)
    changed = config.SerializeToString(deterministic=True) != before
    if changed:
      try:
        _replace(path, render(config, leading_comments(old_text or "")))
      except OSError as e:
        raise ModelConfigError(f"cannot write {path}: {e}") from None
    if after_write is not None:
      try:
        after_write(config)
      except BaseException:
        if changed:
          _restore(path, old_text)
        raise
  return changed


def _restore(path: Path, old_text: str | None) -> None:
  """Puts back the text `update` replaced (None: there was no file)."""
  try:
    if old_text is None:
      path.unlink()
    else:
      _replace(path, old_text)
  except OSError as e:
    raise ModelConfigError(f"cannot restore {path} after a failed step: {e}") from None
