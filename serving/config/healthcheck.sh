#!/usr/bin/env bash
# Exits 0 when tensorflow_model_server's REST API answers GET PATH with HTTP 200
# and (if given) a body containing EXPECT; used as docker compose's healthcheck.
#
#   healthcheck.sh PORT PATH [EXPECT]
#   healthcheck.sh 8501 /v1/models/vit_digits AVAILABLE
#
# Why bash: the tensorflow/serving images carry no curl or wget, but they are
# Ubuntu images with bash, whose /dev/tcp redirection is enough for one
# HTTP/1.0 request. The REST status endpoint reports the model's versions and
# their states; the server opens its ports only after the models in its config
# have loaded (warmup included), so a 200 with AVAILABLE means "ready to serve".
set -u
port="${1:?usage: healthcheck.sh PORT PATH [EXPECT]}"
path="${2:?usage: healthcheck.sh PORT PATH [EXPECT]}"
expect="${3:-}"

exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\n\r\n' "$path" "$port" >&3

IFS= read -r -t 5 status_line <&3 || exit 1
body=""
while IFS= read -r -t 5 line <&3 || [[ -n "$line" ]]; do
  body+="$line"$'\n'
done
exec 3<&-

[[ "$status_line" =~ ^HTTP/1\.[01]\ 200 ]] || exit 1
[[ -z "$expect" || "$body" == *"$expect"* ]]
