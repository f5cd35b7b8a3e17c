#!/usr/bin/env bash
# Installs the command-line tools the test suite runs (tests fail, not skip,
# without them), from Debian's archive. Idempotent: installs only what is
# missing. Run as root (CI) or with sudo; .ci/run calls it before make test.
#
#   promtool   Debian package prometheus: validates and unit-tests the alert
#              rules and dashboard queries of deploy/monitoring
set -euo pipefail
tools=(
  "promtool prometheus"
)
missing=()
for entry in "${tools[@]}"; do
  read -r command package <<< "$entry"
  command -v "$command" > /dev/null || missing+=("$package")
done
if (( ${#missing[@]} )); then
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
