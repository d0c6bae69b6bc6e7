#!/usr/bin/env bash
# Rebuilds the XDP program (ebpf/xdp) and copies the object to ebpf/ipsec-xdp.bpf.o, the checked-in
# copy the engine embeds. Installs the missing toolchain pieces first (idempotent):
#   - the nightly toolchain's rust-src component (for -Z build-std=core),
#   - Debian's llvm-22-dev (bpf-linker links against LLVM 22),
#   - bpf-linker (cargo install, built against that LLVM; ~1.5 min).
#
#   bash ebpf/build.sh                 # install what is missing, build, update ebpf/ipsec-xdp.bpf.o
#   bash ebpf/build.sh --no-install    # fail instead of installing
#   bash ebpf/build.sh --out FILE      # build, write the object to FILE (the checked-in copy untouched)
#   bash ebpf/build.sh --check-toolchain   # exit 0 if the toolchain is present, 1 if not; no build
#
# The build is deterministic: two builds with the same toolchain give byte-identical objects, in any
# directory (see ebpf/README.md); ebpf/check-fresh.sh relies on that.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")

LLVM_MAJOR=22
LLVM_PREFIX=/usr/lib/llvm-$LLVM_MAJOR
BPF_LINKER_VERSION=0.13.0
TOOLCHAIN=nightly

install=1
out="$here/ipsec-xdp.bpf.o"
check_only=0
while [ $# -gt 0 ]; do
    case "$1" in
    --no-install) install=0 ;;
    --out) out=$2; shift ;;
    --check-toolchain) check_only=1; install=0 ;;
    *) echo "usage: $0 [--no-install] [--out FILE] [--check-toolchain]" >&2; exit 2 ;;
    esac
    shift
done

say() { printf '== %s\n' "$*" >&2; }

have_nightly() { rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; }
have_rust_src() {
    local sysroot
    sysroot=$(rustup run "$TOOLCHAIN" rustc --print sysroot 2>/dev/null) || return 1
    [ -f "$sysroot/lib/rustlib/src/rust/library/core/Cargo.toml" ]
}
have_llvm() { [ -x "$LLVM_PREFIX/bin/llvm-config" ]; }
have_linker() {
    command -v bpf-linker >/dev/null 2>&1 &&
        bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"
}

missing=()
have_nightly || missing+=("$TOOLCHAIN toolchain")
have_rust_src || missing+=("rust-src ($TOOLCHAIN)")
have_llvm || missing+=("llvm-$LLVM_MAJOR-dev")
have_linker || missing+=("bpf-linker $BPF_LINKER_VERSION")

missing_list=$(printf '%s, ' "${missing[@]}")
missing_list=${missing_list%, }

if [ "$check_only" = 1 ]; then
    if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
    echo "eBPF toolchain incomplete: missing $missing_list" >&2
    exit 1
fi

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$install" = 0 ]; then
        echo "eBPF toolchain incomplete: missing $missing_list (run without --no-install)" >&2
        exit 1
    fi
    if ! have_nightly; then
        say "installing the $TOOLCHAIN toolchain"
        rustup toolchain install "$TOOLCHAIN" --profile minimal
    fi
    if ! have_rust_src; then
        say "adding rust-src to $TOOLCHAIN"
        rustup component add rust-src --toolchain "$TOOLCHAIN"
    fi
    if ! have_llvm; then
        say "installing llvm-$LLVM_MAJOR-dev"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "llvm-$LLVM_MAJOR-dev" >/dev/null
    fi
    if ! have_linker; then
        say "installing bpf-linker $BPF_LINKER_VERSION (LLVM $LLVM_MAJOR)"
        LLVM_PREFIX=$LLVM_PREFIX cargo install bpf-linker --version "=$BPF_LINKER_VERSION" --locked \
            --no-default-features --features "llvm-$LLVM_MAJOR"
    fi
fi

# A target directory of its own under the root's (git-ignored) target/.
export CARGO_TARGET_DIR="$root/target/ebpf-xdp"
say "building ebpf/xdp ($(rustup run "$TOOLCHAIN" rustc --version), $(bpf-linker --version))"
(cd "$here/xdp" && cargo +"$TOOLCHAIN" build --locked -Z build-std=core --target bpfel-unknown-none --release)
built="$CARGO_TARGET_DIR/bpfel-unknown-none/release/ipsec-xdp"
cp "$built" "$out.tmp"
mv "$out.tmp" "$out"
# Which toolchain made the checked-in copy (check-fresh.sh prints it when a rebuild differs).
toolchain_stamp() {
    rustup run "$TOOLCHAIN" rustc --version
    bpf-linker --version
    echo "llvm $("$LLVM_PREFIX/bin/llvm-config" --version)"
}
if [ "$out" = "$here/ipsec-xdp.bpf.o" ]; then
    toolchain_stamp >"$here/ipsec-xdp.bpf.o.toolchain"
fi
say "wrote $out ($(wc -c <"$out") bytes, sha256 $(sha256sum "$out" | cut -c1-16))"
