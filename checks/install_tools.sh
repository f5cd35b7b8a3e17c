#!/usr/bin/env bash
# The system tools `make setup` and `make test` need beyond the Python
# packages of requirements.lock, from Debian's packages; .ci/run calls it
# before `make test`, and the tests that run a tool fail, not skip, without
# it. Idempotent: installs only what is missing, so a machine that has
# everything needs neither root nor the network.
#
#   bash checks/install_tools.sh
#
# One Debian package a line; add a tool here, not in .ci/run.
set -euo pipefail
packages=(
  python3.11        # make setup builds .venv with python3.11
  python3.11-venv   # ... and its ensurepip
  prometheus        # promtool: checks and unit-tests deploy/monitoring's rules and queries
)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$package")
done
if ((${#missing[@]})); then
  echo "install_tools: installing ${missing[*]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
