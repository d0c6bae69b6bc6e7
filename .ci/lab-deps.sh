#!/usr/bin/env bash
# System packages of the one-command lab (`ipsec-control lab`, README's first command) on Debian 12,
# installed idempotently (only what is missing; run as root):
# - the engine's build and run dependencies (.ci/engine-deps.sh: clang m4 libelf-dev zlib1g-dev
#   make pkg-config ethtool iputils-ping);
# - the customer gateway: strongSwan's charon with the kernel-libipsec plugin (ESP in userspace;
#   libcharon-extra-plugins) and swanctl;
# - iproute2 (namespaces, veth) and iputils-ping.
# `bash .ci/test` runs it too (control/tests/lab.rs needs all of it).
set -euo pipefail
cd "$(dirname "$0")/.."

lab_pkgs=(strongswan-charon libcharon-extra-plugins strongswan-swanctl iproute2 iputils-ping)
lab_missing=()
for p in "${lab_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || lab_missing+=("$p")
done
if [ ${#lab_missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "missing packages for the lab: ${lab_missing[*]} (run this script as root)" >&2
        exit 1
    fi
    printf '\n== installing %s\n' "${lab_missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${lab_missing[@]}" >/dev/null
fi

source .ci/engine-deps.sh

# These packages start no service: the lab runs its own charon in the customer gateway's namespace.
echo "lab dependencies: ok"
