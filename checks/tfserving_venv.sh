#!/usr/bin/env bash
# Builds the side environment of `make check-tfserving`: a Python 3.11 venv
# with tensorflow-cpu==VERSION, the TensorFlow that tensorflow/serving:VERSION
# is built from, plus tensorflow-serving-api (only for its PredictionLog
# protos, so without dependencies: it would pull the full `tensorflow` wheel).
#
#   checks/tfserving_venv.sh VERSION VENV_DIR WHEEL_DIR
#
# Why a wheel directory: the wheels (~300 MB per TensorFlow release) are
# downloaded once into WHEEL_DIR/VERSION and installed from there with
# --no-index, so a CI run that restores WHEEL_DIR (e.g. .cache/) needs no
# index at all and a rebuilt venv costs an install, not a download.
set -euo pipefail
version="${1:?usage: tfserving_venv.sh VERSION VENV_DIR WHEEL_DIR}"
venv="${2:?usage: tfserving_venv.sh VERSION VENV_DIR WHEEL_DIR}"
wheels="${3:?usage: tfserving_venv.sh VERSION VENV_DIR WHEEL_DIR}/$version"
python="${PYTHON:-python3.11}"
minor="${version%.*}"
# serving-api is released per minor version, not always per patch (2.16.1
# serves tensorflow 2.16.2); `==2.16.*` picks the newest of that minor.
requirements=("tensorflow-cpu==$version")
api="tensorflow-serving-api==$minor.*"

install() {
  "$venv/bin/pip" install --quiet --no-index --find-links "$wheels" "${requirements[@]}" &&
    "$venv/bin/pip" install --quiet --no-index --no-deps --find-links "$wheels" "$api"
}

rm -rf "$venv"
"$python" -m venv "$venv"
if ! install 2>/dev/null; then
  echo "tfserving_venv: downloading tensorflow-cpu==$version into $wheels" >&2
  mkdir -p "$wheels"
  "$venv/bin/pip" download --quiet --dest "$wheels" "${requirements[@]}"
  "$venv/bin/pip" download --quiet --no-deps --dest "$wheels" "$api"
  install
fi
"$venv/bin/python" -c "import tensorflow as tf; print('tfserving_venv: tensorflow', tf.__version__)"
