#!/usr/bin/env bash
# System packages the engine needs (idempotent; sourced by .ci/run and .ci/test):
# - xsk-rs builds libxdp and libbpf from source (feature use_cc_build) and runs bindgen:
#   clang (libclang), m4, libelf-dev, zlib1g-dev, make, pkg-config;
# - engine/tests/e2e_static.rs and channel.rs turn off checksum offload on veth with ethtool;
# - engine/tests/e2e_static.rs, e2e_mtu.rs and channel.rs ping (iputils: -M do/dont, -t, -6);
# - engine/tests/e2e_afpacket.rs drops ESP / UDP 4500 input with nftables (nft) and runs the engine
#   without CAP_BPF with setpriv (util-linux).
engine_pkgs=(clang m4 libelf-dev zlib1g-dev make pkg-config ethtool iputils-ping nftables util-linux)
engine_missing=()
for p in "${engine_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || engine_missing+=("$p")
done
if [ ${#engine_missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        printf '\n== installing %s\n' "${engine_missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${engine_missing[@]}" >/dev/null
    else
        echo "missing packages for the engine: ${engine_missing[*]} (apt-get install them as root)" >&2
    fi
fi
