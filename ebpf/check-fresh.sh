#!/usr/bin/env bash
# Checks that the checked-in ebpf/ipsec-xdp.bpf.o is what the sources in ebpf/xdp + ebpf/common build
# to. Where the eBPF toolchain (nightly + rust-src, llvm-22-dev, bpf-linker) is present it rebuilds
# into a temporary file and compares bytes: the build is deterministic, so any difference means the
# copy is stale (rebuild with `bash ebpf/build.sh` and commit the object). Where the toolchain is
# absent it says so and exits 0: the workspace still builds from the checked-in copy.
#
#   bash ebpf/check-fresh.sh          # rebuild + compare, or skip without the toolchain
#   IPSEC_EBPF_INSTALL=1 bash ebpf/check-fresh.sh   # install the toolchain first (as build.sh does)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
checked_in="$here/ipsec-xdp.bpf.o"

if [ "${IPSEC_EBPF_INSTALL:-0}" != 1 ] && ! bash "$here/build.sh" --check-toolchain 2>/dev/null; then
    why=$(bash "$here/build.sh" --check-toolchain 2>&1 || true)
    echo "check-fresh: eBPF toolchain absent ($why), skipped"
    exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
install_flag=--no-install
[ "${IPSEC_EBPF_INSTALL:-0}" = 1 ] && install_flag=
bash "$here/build.sh" $install_flag --out "$tmp/ipsec-xdp.bpf.o"

if cmp -s "$tmp/ipsec-xdp.bpf.o" "$checked_in"; then
    echo "check-fresh: ebpf/ipsec-xdp.bpf.o is fresh ($(wc -c <"$checked_in") bytes)"
    exit 0
fi

echo "check-fresh: ebpf/ipsec-xdp.bpf.o is STALE: a rebuild of ebpf/xdp differs from the checked-in copy." >&2
echo "  checked-in: $(sha256sum "$checked_in" | cut -c1-16), rebuilt: $(sha256sum "$tmp/ipsec-xdp.bpf.o" | cut -c1-16)" >&2
if [ -f "$here/ipsec-xdp.bpf.o.toolchain" ]; then
    echo "  checked-in copy was built with: $(tr '\n' ';' <"$here/ipsec-xdp.bpf.o.toolchain")" >&2
fi
echo "  this machine has: $(rustup run nightly rustc --version); $(bpf-linker --version)" >&2
objdump=/usr/lib/llvm-22/bin/llvm-objdump
if [ -x "$objdump" ]; then
    echo "  first lines of the disassembly diff:" >&2
    diff <("$objdump" -d "$checked_in" | tail -n +3) <("$objdump" -d "$tmp/ipsec-xdp.bpf.o" | tail -n +3) |
        head -n 20 >&2 || true
fi
echo "  fix: bash ebpf/build.sh && git add ebpf/ipsec-xdp.bpf.o ebpf/ipsec-xdp.bpf.o.toolchain" >&2
exit 1
