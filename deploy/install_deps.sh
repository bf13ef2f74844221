#!/usr/bin/env bash
# Installs the Debian packages tandem builds with, when any is missing. Idempotent and quiet.
set -euo pipefail
packages=(
  cmake ninja-build g++ pkg-config python3 python3-pip python3-venv
  libabsl-dev libgtest-dev libgmock-dev nlohmann-json3-dev
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  clang libclang-rt-14-dev
  libssl-dev openssl
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# python3 may come from elsewhere (pyenv); only its pip and venv (ensurepip) matter.
skip=()
if command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; then
  skip+=(python3 python3-pip)
  python3 -c "import ensurepip" 2>/dev/null && skip+=(python3-venv)
fi
for s in "${skip[@]}"; do
  for i in "${!missing[@]}"; do [[ ${missing[i]} == "$s" ]] && unset 'missing[i]'; done
done
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
[[ ${#missing[@]} == 0 ]] && exit 0

sudo=
[[ $(id -u) == 0 ]] || sudo=sudo
echo "installing: ${missing[*]}" >&2
$sudo apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
  "${missing[@]}" >/dev/null
