#!/usr/bin/env bash
# Installs the Debian 12 packages taskq needs, when any is missing. Safe to run repeatedly.
set -euo pipefail

packages=(
  g++ cmake make ninja-build pkg-config
  libboost1.81-dev libfmt-dev nlohmann-json3-dev catch2 libhowardhinnant-date-dev tzdata
  libpq-dev postgresql libcli11-dev
  clang libclang-rt-14-dev python3 valgrind
  curl prometheus chromium
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

# Node.js and npm run the browser test's tooling (playwright-core): Debian's packages when no
# node is installed already (playwright-core 1.64 declares node >= 20; Debian 12 ships 18).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  sudo_cmd=()
  if [ "$(id -u)" != 0 ]; then sudo_cmd=(sudo); fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends nodejs npm
fi
bash "$(dirname "$0")/browser_deps.sh"
