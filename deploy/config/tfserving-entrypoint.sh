#!/usr/bin/env bash
# Starts tensorflow_model_server with the bundle's models.config as it is.
#
# Why this exists: the exporter writes models.config with base paths relative
# to the config file ("models/<name>"), which the embedded server resolves from
# the project root. tensorflow_model_server refuses relative base paths ("Expected
# model <name> to have an absolute path or URI; got base_path()=models/<name>",
# ServerCore's ValidateModelConfigList; the model_config_list_root_dir option
# that would resolve them is not reachable from its command line). So this
# script takes the --model_config_file=SOURCE flag, writes a copy of SOURCE
# whose relative base paths are prefixed with $BASE_PATH_ROOT, starts the
# server on the copy, and keeps the copy in step with SOURCE while the server
# runs: the exporter's new models, the rollout tool's version labels and hand
# edits reach the server through its own --model_config_file_poll_wait_seconds
# polling, exactly as with the embedded server. Absolute paths and URIs
# (gs://...) are left alone. Every other flag is passed through unchanged.
#
# Environment:
#   BASE_PATH_ROOT       directory or URI that relative base paths resolve
#                        against (default: SOURCE's directory)
#   RESOLVED_CONFIG      where the copy is written (default /tmp/models.config)
#   CONFIG_SYNC_SECONDS  how often SOURCE is checked for changes (default 2)
#   TF_SERVING_BIN       the server binary (default tensorflow_model_server)
set -euo pipefail

source_config=""
server_args=()
for arg in "$@"; do
  case "$arg" in
    --model_config_file=*) source_config="${arg#--model_config_file=}" ;;
    *) server_args+=("$arg") ;;
  esac
done
server_bin="${TF_SERVING_BIN:-tensorflow_model_server}"

if [[ -z "$source_config" ]]; then
  exec "$server_bin" "${server_args[@]}"
fi

root="${BASE_PATH_ROOT:-$(dirname "$source_config")}"
root="${root%/}"
resolved="${RESOLVED_CONFIG:-/tmp/models.config}"
interval="${CONFIG_SYNC_SECONDS:-2}"
if [[ "$root" == *[\#\&\\]* ]]; then
  echo "tfserving-entrypoint: BASE_PATH_ROOT must not contain '#', '&' or '\\': $root" >&2
  exit 2
fi

# base_path: "<relative>" -> base_path: "<root>/<relative>". A relative path is
# one that starts with neither '/' nor contains ':' (URIs have a scheme).
render() {
  sed -E "s#(base_path[[:space:]]*:[[:space:]]*\")([^/\":][^\":]*\")#\\1${root}/\\2#" "$source_config"
}

# Writes the copy through a temporary file and a rename, so the server never
# reads half a file; leaves it alone when SOURCE is unreadable mid-replace.
sync_config() {
  local text
  text="$(render)" || return 0
  if [[ ! -f "$resolved" ]] || [[ "$text" != "$(cat "$resolved")" ]]; then
    printf '%s\n' "$text" > "$resolved.tmp"
    mv -f "$resolved.tmp" "$resolved"
  fi
}

sync_config
echo "tfserving-entrypoint: serving $source_config as $resolved" \
     "(relative base paths under $root)" >&2

# After the exec below, this shell's PID is the server's: the loop ends with it.
server_pid=$$
(
  while kill -0 "$server_pid" 2>/dev/null; do
    sleep "$interval"
    sync_config || true
  done
) &

exec "$server_bin" "${server_args[@]}" "--model_config_file=$resolved"
