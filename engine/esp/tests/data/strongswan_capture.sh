#!/bin/bash
# Regenerates engine/esp/tests/data/strongswan_<case>.json: ESP packets produced by strongSwan
# (an independent ESP implementation: charon + kernel-libipsec, i.e. userspace ESP, which always
# UDP-encapsulates on port 4500), together with the CHILD_SA keys charon logs at `chd = 4`.
#
# Needs root, Debian 12 packages
#   strongswan-charon libcharon-extra-plugins strongswan-swanctl tcpdump iputils-ping ethtool python3
# and nothing else; no strongSwan bits are committed, only the captured bytes and keys.
#
# Usage: strongswan_capture.sh [OUTDIR] [CASE...]
#   OUTDIR defaults to the directory of this script; CASEs default to all of
#   aes128gcm16 aes256-sha256 aes128-sha1 3des-md5 (the ESP proposal in strongSwan syntax;
#   the file is strongswan_<case with '-' replaced by '_'>.json).
#
# For every case it creates two network namespaces joined by a veth pair (198.18.0.1 <->
# 198.18.0.2, RFC 2544 benchmarking space), puts the inner addresses on `lo` (gateway A:
# 192.0.2.1, gateway B: 198.51.100.1), starts one charon per namespace (each with a private
# /run, since the pid file path is fixed), brings up an IKEv2/PSK tunnel 192.0.2.0/24 <->
# 198.51.100.0/24 with that ESP proposal, pings B's inner address from A's inner address a few
# times (two sizes, so padding differs), and captures the underlay with tcpdump. Everything it
# creates (namespaces, veths, processes, the work directory) is removed on exit, also on
# failure; re-running overwrites the JSON files (new SPIs and keys each time; the test reads
# everything it checks from the files). Run time: about 10 s per case. KEEP=1 keeps the work
# directory (charon configs and logs, pcaps) for inspection.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
OUTDIR=${1:-$HERE}
shift || true
CASES=${*:-aes128gcm16 aes256-sha256 aes128-sha1 3des-md5}
P=ss$$
W=$(mktemp -d /tmp/strongswan-capture.XXXXXX)
NSA=${P}a NSB=${P}b
PIDS=""
cleanup() {
  for p in $PIDS; do kill -TERM "$p" 2>/dev/null; done
  sleep 1
  for p in $PIDS; do kill -KILL "$p" 2>/dev/null; done
  PIDS=""
  ip netns del "$NSA" 2>/dev/null
  ip netns del "$NSB" 2>/dev/null
}
final() {
  cleanup
  [ -n "${KEEP:-}" ] && echo "work dir kept: $W" >&2 || rm -rf "$W"
}
trap final EXIT
trap 'exit 1' INT TERM

# write_conf DIR ME PEER MY_INNER PEER_INNER ESP_PROPOSAL ROLE
write_conf() {
  local d=$1 me=$2 peer=$3 lts=$4 rts=$5 esp=$6 role=$7 start=none
  mkdir -p "$d/run" "$d/swanctl/conf.d"
  cat >"$d/strongswan.conf" <<EOF
charon {
  load = random nonce openssl aes sha1 sha2 md5 hmac gcm pem pkcs1 x509 pubkey gmp kdf kernel-libipsec kernel-netlink socket-default vici updown
  install_virtual_ip = no
  plugins {
    vici {
      socket = unix://$d/charon.vici
    }
  }
  filelog {
    log {
      path = $d/charon.log
      append = no
      default = 1
      ike = 4
      chd = 4
      cfg = 2
      net = 1
      enc = 1
      flush_line = yes
      ike_name = yes
    }
  }
}
swanctl {
  socket = unix://$d/charon.vici
}
EOF
  cat >"$d/swanctl/swanctl.conf" <<EOF
connections {
  gw {
    version = 2
    local_addrs = $me
    remote_addrs = $peer
    proposals = aes128gcm16-prfsha256-ecp256
    local {
      auth = psk
      id = $role.example
    }
    remote {
      auth = psk
    }
    children {
      net {
        mode = tunnel
        local_ts = $lts
        remote_ts = $rts
        esp_proposals = $esp
        start_action = $start
      }
    }
  }
}
secrets {
  ike-psk {
    secret = "throwaway-test-psk-for-captures"
  }
}
EOF
}

start_charon() { # NS DIR
  ip netns exec "$1" unshare -m --propagation private sh -c \
    "mount --bind $2/run /run; export STRONGSWAN_CONF=$2/strongswan.conf; exec /usr/lib/ipsec/charon" \
    >"$2/charon.out" 2>&1 &
  PIDS="$PIDS $!"
}

swanctl_in() { # NS DIR ARGS...
  local ns=$1 d=$2
  shift 2
  timeout 30 ip netns exec "$ns" env STRONGSWAN_CONF="$d/strongswan.conf" SWANCTL_DIR="$d/swanctl" swanctl "$@" \
    2>>"$d/swanctl.err"
}

wait_vici() { # DIR
  for _ in $(seq 1 50); do
    [ -S "$1/charon.vici" ] && return 0
    sleep 0.1
  done
  echo "charon in $1 did not start" >&2
  cat "$1/charon.out" >&2
  return 1
}

run_case() {
  local esp=$1 name=${1//-/_} d=$W/$1
  local A=$d/a B=$d/b
  mkdir -p "$d"
  ip netns add "$NSA"
  ip netns add "$NSB"
  ip link add "${P}va" type veth peer name "${P}vb"
  ip link set "${P}va" netns "$NSA"
  ip link set "${P}vb" netns "$NSB"
  ip -n "$NSA" link set lo up
  ip -n "$NSB" link set lo up
  ip -n "$NSA" addr add 198.18.0.1/24 dev "${P}va"
  ip -n "$NSB" addr add 198.18.0.2/24 dev "${P}vb"
  ip -n "$NSA" addr add 192.0.2.1/32 dev lo
  ip -n "$NSB" addr add 198.51.100.1/32 dev lo
  # Checksums in software: with veth's default TX checksum offload the captured UDP checksums
  # would be partial (pseudo-header only), not what a real wire carries.
  ip netns exec "$NSA" ethtool -K "${P}va" tx off >/dev/null
  ip netns exec "$NSB" ethtool -K "${P}vb" tx off >/dev/null
  ip -n "$NSA" link set "${P}va" up
  ip -n "$NSB" link set "${P}vb" up
  write_conf "$A" 198.18.0.1 198.18.0.2 192.0.2.0/24 198.51.100.0/24 "$esp" gw-a
  write_conf "$B" 198.18.0.2 198.18.0.1 198.51.100.0/24 192.0.2.0/24 "$esp" gw-b
  start_charon "$NSA" "$A"
  start_charon "$NSB" "$B"
  wait_vici "$A" && wait_vici "$B" || return 1
  swanctl_in "$NSA" "$A" --load-all >/dev/null
  swanctl_in "$NSB" "$B" --load-all >/dev/null
  ip netns exec "$NSB" tcpdump -i "${P}vb" -s 0 -U --immediate-mode -w "$d/underlay.pcap" udp port 4500 \
    2>"$d/tcpdump.err" &
  local tcpdump_pid=$!
  PIDS="$PIDS $tcpdump_pid"
  sleep 1
  swanctl_in "$NSA" "$A" --initiate --child net >"$d/initiate.out" || {
    cat "$d/initiate.out" >&2
    return 1
  }
  sleep 1
  ip netns exec "$NSA" ping -c 3 -i 0.2 -W 2 -I 192.0.2.1 198.51.100.1 >"$d/ping.out" || {
    cat "$d/ping.out" >&2
    return 1
  }
  ip netns exec "$NSA" ping -c 1 -W 2 -s 100 -I 192.0.2.1 198.51.100.1 >>"$d/ping.out" || return 1
  sleep 1
  swanctl_in "$NSA" "$A" --list-sas >"$d/list-sas.out"
  kill -INT "$tcpdump_pid"
  wait "$tcpdump_pid" 2>/dev/null
  cleanup
  python3 - "$esp" "$A/charon.log" "$d/underlay.pcap" "$OUTDIR/strongswan_$name.json" <<'PYEOF'
import json, re, struct, subprocess, sys

esp, log_path, pcap_path, out_path = sys.argv[1:]
log = open(log_path).read()

def dump(label, required=True):
    # charon's %B chunk format, one log line each:
    #   "11[CHD] <gw|1> encryption initiator key => 20 bytes @ 0x7f..."
    #   "11[CHD] <gw|1>    0: EF 74 9E 62 85 2B 46 EE BF B3 15 71 07 1C 63 6E  .t.b.+F....q..cn"
    lines = log.splitlines()
    for i, line in enumerate(lines):
        m = re.search(re.escape(label) + r" => (\d+) bytes @", line)
        if m:
            break
    else:
        if required:
            sys.exit(f"{label} not in {log_path}")
        return ""  # AEAD: no integrity keys
    n, out = int(m.group(1)), []
    for line in lines[i + 1:]:
        m = re.search(r"\[CHD\] <[^>]*>\s+(\d+): ((?:[0-9A-F]{2} ){1,16})", line + " ")
        if not m or int(m.group(1)) != len(out):
            break
        out += m.group(2).split()
    assert len(out) == n, (label, n, len(out))
    return "".join(out).lower()

# initiator (gateway A) log: "CHILD_SA net{1} established with SPIs c0ffee01_i c0ffee02_o and TS ..."
m = re.search(r"established with SPIs ([0-9a-f]{8})_i ([0-9a-f]{8})_o", log)
spi_a_in, spi_a_out = m.group(1), m.group(2)
keys = {k: dump(k, k.startswith("encryption")) for k in (
    "encryption initiator key", "encryption responder key",
    "integrity initiator key", "integrity responder key")}
cipher, _, integ = esp.partition("-")
vers = subprocess.run(["/usr/lib/ipsec/charon", "--version"], capture_output=True, text=True).stdout.strip()
kernel = open("/proc/sys/kernel/osrelease").read().strip()

def packets(path):
    data = open(path, "rb").read()
    magic, = struct.unpack("<I", data[:4])
    assert magic == 0xA1B2C3D4, "expected a little-endian microsecond pcap"
    linktype, = struct.unpack("<I", data[20:24])
    assert linktype == 1, "expected Ethernet"
    off = 24
    while off < len(data):
        _, _, incl, orig = struct.unpack("<IIII", data[off:off + 16])
        frame = data[off + 16:off + 16 + incl]
        assert incl == orig
        off += 16 + incl
        yield frame

sas = {
    # initiator -> responder: the responder's inbound SPI (= A's outbound), initiator keys
    "a_to_b": {"spi": spi_a_out, "src": "198.18.0.1", "dst": "198.18.0.2",
               "enc_key": keys["encryption initiator key"], "auth_key": keys["integrity initiator key"],
               "inner_src": "192.0.2.1", "inner_dst": "198.51.100.1", "icmp_type": 8, "packets": []},
    "b_to_a": {"spi": spi_a_in, "src": "198.18.0.2", "dst": "198.18.0.1",
               "enc_key": keys["encryption responder key"], "auth_key": keys["integrity responder key"],
               "inner_src": "198.51.100.1", "inner_dst": "192.0.2.1", "icmp_type": 0, "packets": []},
}
for frame in packets(pcap_path):
    assert frame[12:14] == b"\x08\x00"
    ip = frame[14:]
    total = struct.unpack(">H", ip[2:4])[0]
    ip = ip[:total]
    ihl = (ip[0] & 15) * 4
    udp = ip[ihl:]
    if udp[8:12] == b"\0\0\0\0" or len(udp) <= 9:
        continue  # IKE (non-ESP marker) or NAT-keepalive
    spi = udp[8:12].hex()
    for sa in sas.values():
        if sa["spi"] == spi:
            sa["packets"].append(ip.hex())
            break
    else:
        sys.exit(f"ESP packet with unknown SPI {spi}")

doc = {
    "description": f"ESP-in-UDP (RFC 3948) packets produced by strongSwan charon with kernel-libipsec "
                   f"(userspace ESP), ESP proposal '{esp}', IKEv2/PSK, tunnel mode, no ESN; "
                   f"ping -I 192.0.2.1 198.51.100.1 (3 x 56 and 1 x 100 data bytes) from gateway A; "
                   f"underlay captured on gateway B's veth with tcpdump; keys from charon's 'chd = 4' log. "
                   f"Throwaway test keys.",
    "generator": f"engine/esp/tests/data/strongswan_capture.sh; {vers}; Linux {kernel}",
    "esp_proposal": esp,
    "cipher": {"aes128gcm16": "aes128gcm16"}.get(cipher, cipher),
    "integrity": integ or "none",
    "esn": False,
    "udp_ports": [4500, 4500],
    "sas": [dict(direction=k, **v) for k, v in sas.items()],
}
for sa in doc["sas"]:
    assert len(sa["packets"]) >= 4, (sa["direction"], len(sa["packets"]))
with open(out_path, "w") as f:
    json.dump(doc, f, indent=1)
    f.write("\n")
print(f"{out_path}: {[(s['direction'], s['spi'], len(s['packets'])) for s in doc['sas']]}")
PYEOF
}

for c in $CASES; do
  run_case "$c" || {
    echo "case $c failed; logs:" >&2
    tail -n 30 "$W/$c/a/charon.log" >&2
    exit 1
  }
done
