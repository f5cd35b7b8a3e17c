#!/usr/bin/env bash
# Exits 0 when tensorflow_model_server is ready: docker compose's healthcheck
# and the Kubernetes readiness probe (deploy/base).
#
#   healthcheck.sh PORT --models-from CONFIG   every model CONFIG names has an
#                                              AVAILABLE version (GET /v1/models/<name>)
#   healthcheck.sh PORT PATH [EXPECT]          GET PATH answers 200 (containing EXPECT)
#   healthcheck.sh 8501 --models-from /srv/vit/models.config
#
# Why the model list comes from models.config: a pod or container is ready
# when everything it is configured to serve is, so the probe follows the
# config (a model added by the exporter, or a second model, is checked too)
# instead of naming one model. Only the `name:` fields are read; models.config
# is re-read at every probe, as the server re-reads it.
#
# Why bash: the tensorflow/serving images carry no curl or wget, but they are
# Ubuntu images with bash, whose /dev/tcp redirection is enough for one
# HTTP/1.0 request. The REST status endpoint reports the model's versions and
# their states; the server opens its ports only after the models in its config
# have loaded (warmup included), so a 200 with AVAILABLE means "ready to serve".
set -u
usage="usage: healthcheck.sh PORT (--models-from CONFIG | PATH [EXPECT])"
port="${1:?$usage}"
path="${2:?$usage}"

# get PATH EXPECT: 0 when GET PATH is a 200 whose body contains EXPECT.
get() {
  local status_line line body=""
  exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\n\r\n' "$1" "$port" >&3
  IFS= read -r -t 5 status_line <&3 || { exec 3<&-; return 1; }
  while IFS= read -r -t 5 line <&3 || [[ -n "$line" ]]; do
    body+="$line"$'\n'
  done
  exec 3<&-
  [[ "$status_line" =~ ^HTTP/1\.[01]\ 200 ]] || return 1
  [[ -z "$2" || "$body" == *"$2"* ]]
}

if [[ "$path" != "--models-from" ]]; then
  get "$path" "${3:-}"
  exit
fi
config="${3:?$usage}"
names="$(sed -nE "s/.*(^|[[:space:]{])name[[:space:]]*:[[:space:]]*[\"']([^\"']+)[\"'].*/\\2/p" \
         "$config")" || exit 1
[[ -n "$names" ]] || exit 1       # nothing configured: nothing to send traffic to
while IFS= read -r name; do
  get "/v1/models/$name" '"AVAILABLE"' || exit 1
done <<< "$names"
