#!/usr/bin/env bash
# Installs the Debian 12 packages taskq needs, when any is missing. Safe to run repeatedly.
set -euo pipefail

packages=(
  g++ cmake make ninja-build pkg-config
  libboost1.81-dev libfmt-dev nlohmann-json3-dev catch2 libhowardhinnant-date-dev tzdata
  libpq-dev postgresql libcli11-dev
  clang libclang-rt-14-dev python3
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "taskq: installing missing packages: ${missing[*]}"
  sudo_cmd=()
  if [ "$(id -u)" != 0 ]; then sudo_cmd=(sudo); fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
