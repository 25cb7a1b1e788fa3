#!/usr/bin/env bash
# Installs everything kvcache needs on a fresh Debian 12 machine (root or sudo), from Debian's packages.
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config git python3 python3-pip
  libeigen3-dev xtensor-dev catch2 libbenchmark-dev libfmt-dev nlohmann-json3-dev libxxhash-dev libcli11-dev
  libsqlite3-dev
  python3-matplotlib python3-numpy clang libclang-rt-14-dev
  libcpp-httplib-dev chromium chromium-driver
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all installed"
  exit 0
fi
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
echo "deps: installing ${missing[*]}"
$sudo_cmd apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
