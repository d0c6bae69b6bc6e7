#!/usr/bin/env python3
"""Independent decryption of the underlay capture of `engine/tests/e2e_static.rs` with scapy.

Usage: e2e_scapy_decrypt.py SAS.json FRAMES.hex

FRAMES.hex holds the Ethernet frames captured on the underlay bridge port, hex, one per line.
SAS.json (written by the Rust test, test keys only):

    {"sas": [{"spi": 4609, "cipher": "AES-GCM", "enc_key": "hex",     # AES-GCM: key + 4-byte salt
              "integ": "NULL", "auth_key": "hex",                      # scapy AUTH_ALGOS name
              "src": "198.18.0.1", "dst": "198.18.0.2"}, ...],         # outer addresses
     "udp": [4500, 4500] or null,                                      # ESP in UDP (RFC 3948)
     "net_a": "192.0.2.0/24", "net_b": "198.51.100.0/24",
     "udp_port_b": 5001, "udp_port_a": 5002, "tcp_port_b": 5003, "tcp_port_a": 5004,
     "datagram_lens": [64, 512, ...]}

Every frame must be ARP, IPv6 neighbour discovery / MLD (ICMPv6 types 130-143), or ESP (ESP in
UDP when "udp" is set) between the two SAs' outer addresses. Each ESP packet is checked
independently of the engine's code: outer IPv4 header checksum, NAT-T ports and the zero UDP
checksum over IPv4 (RFC 3948 §2.1), the SA by SPI and direction; it is decrypted with scapy's
`SecurityAssociation` (ICV / GCM tag verified), and the inner packet must be IPv4 from one
protected subnet to the other, in the direction of its SA. UDP datagrams to the test's ports are
checked: length by sequence number ("datagram_lens") and content (byte k of the payload after the
4-byte sequence number is (seq * 31 + k) mod 256).

Prints one JSON object: {"scapy_version", "frames", "arp", "ipv6_control", "esp_12", "esp_21",
"inner_icmp", "udp_ab", "udp_ba" (distinct intact datagrams), "tcp_bytes_ab", "tcp_bytes_ba"
(TCP payload bytes to the listeners' ports, retransmissions included), "error_count",
"errors": [the first 20]}.
"_12" is the direction of the first SA (gw-1 -> gw-2), "ab" host-A -> host-B.
"""

import ipaddress
import json
import os
import socket
import struct
import sys
import warnings

_CTX = None


def load(cfg):
    warnings.simplefilter("ignore")
    from scapy.layers import ipsec
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.utils import checksum

    sas = {}
    for i, s in enumerate(cfg["sas"]):
        v6 = ":" in s["src"]
        tunnel = (IPv6 if v6 else IP)(src=s["src"], dst=s["dst"])
        nat_t = UDP(sport=cfg["udp"][0], dport=cfg["udp"][1]) if cfg["udp"] else None
        enc_key = bytes.fromhex(s["enc_key"])
        auth_key = bytes.fromhex(s["auth_key"])
        sa = ipsec.SecurityAssociation(
            ipsec.ESP,
            spi=s["spi"],
            crypt_algo=s["cipher"],
            crypt_key=enc_key or None,
            auth_algo=s["integ"],
            auth_key=auth_key or None,
            tunnel_header=tunnel,
            nat_t_header=nat_t,
        )
        sas[s["spi"]] = (i, sa, canon(s["src"]), canon(s["dst"]))
    return {"cfg": cfg, "sas": sas, "IP": IP, "IPv6": IPv6, "checksum": checksum, "ipsec": ipsec}


def canon(addr):
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    return socket.inet_ntop(fam, socket.inet_pton(fam, addr))


def empty():
    return {"frames": 0, "arp": 0, "ipv6_control": 0, "esp_12": 0, "esp_21": 0, "inner_icmp": 0,
            "udp_ab": [], "udp_ba": [], "tcp_bytes_ab": 0, "tcp_bytes_ba": 0, "errors": []}


def check_frame(ctx, n, frame, out):
    cfg = ctx["cfg"]
    err = out["errors"].append
    out["frames"] += 1
    if len(frame) < 14:
        err(f"frame {n}: {len(frame)} bytes")
        return
    ethertype = struct.unpack("!H", frame[12:14])[0]
    if ethertype == 0x0806:
        out["arp"] += 1
        return
    ip = frame[14:]
    if ethertype == 0x0800 and len(ip) >= 20 and ip[0] >> 4 == 4:
        ihl = (ip[0] & 15) * 4
        total = struct.unpack("!H", ip[2:4])[0]
        ip = ip[:total]
        hdr = bytearray(ip[:ihl])
        hdr[10:12] = b"\0\0"
        if ctx["checksum"](bytes(hdr)) != struct.unpack("!H", ip[10:12])[0]:
            err(f"frame {n}: bad outer IPv4 header checksum")
        proto, l4 = ip[9], ip[ihl:]
        src, dst = socket.inet_ntop(socket.AF_INET, ip[12:16]), socket.inet_ntop(socket.AF_INET, ip[16:20])
        cls = ctx["IP"]
        v6 = False
    elif ethertype == 0x86DD and len(ip) >= 40 and ip[0] >> 4 == 6:
        ip = ip[:40 + struct.unpack("!H", ip[4:6])[0]]
        proto, l4 = ip[6], ip[40:]
        # MLD reports come after a hop-by-hop options header: walk the extension headers.
        while proto in (0, 43, 60) and len(l4) >= 8:
            proto, l4 = l4[0], l4[(l4[1] + 1) * 8:]
        if proto == 58 and l4 and 130 <= l4[0] <= 143:
            out["ipv6_control"] += 1
            return
        src, dst = socket.inet_ntop(socket.AF_INET6, ip[8:24]), socket.inet_ntop(socket.AF_INET6, ip[24:40])
        cls = ctx["IPv6"]
        v6 = True
    else:
        err(f"frame {n}: not ARP, IPv4 or IPv6 (ethertype {ethertype:#06x})")
        return
    where = f"frame {n} ({src} -> {dst})"
    if cfg["udp"]:
        if proto != 17 or len(l4) < 16:
            err(f"{where}: protocol {proto}, expected ESP in UDP")
            return
        sport, dport, ulen, uck = struct.unpack("!HHHH", l4[:8])
        if sorted([sport, dport]) != sorted(cfg["udp"]):
            err(f"{where}: UDP ports {sport} -> {dport}")
        if ulen != len(l4):
            err(f"{where}: UDP length {ulen}, datagram {len(l4)} bytes")
        if not v6 and uck != 0:
            err(f"{where}: IPv4 UDP checksum {uck:#06x}, RFC 3948 says zero")
        esp = l4[8:]
        if esp[:4] == b"\0\0\0\0":
            err(f"{where}: non-ESP marker (IKE) on the underlay")
            return
    else:
        if proto != 50:
            err(f"{where}: protocol {proto}, expected ESP (50)")
            return
        esp = l4
    spi = struct.unpack("!I", esp[:4])[0]
    if spi not in ctx["sas"]:
        err(f"{where}: unknown SPI {spi:#010x}")
        return
    idx, sa, sa_src, sa_dst = ctx["sas"][spi]
    if (src, dst) != (sa_src, sa_dst):
        err(f"{where}: SPI {spi:#010x} belongs to {sa_src} -> {sa_dst}")
        return
    try:
        dec = bytes(sa.decrypt(cls(bytes(ip))))
    except ctx["ipsec"].IPSecIntegrityError as e:
        err(f"{where}: ICV / tag does not verify: {e}")
        return
    except Exception as e:  # noqa: BLE001 - report whatever scapy raises
        err(f"{where}: scapy cannot decrypt: {e!r}")
        return
    out["esp_12" if idx == 0 else "esp_21"] += 1
    if len(dec) < 20 or dec[0] >> 4 != 4:
        err(f"{where}: inner packet is not IPv4: {dec[:20].hex()}")
        return
    inner = ctx["IP"](dec)
    if inner.len != len(dec):
        err(f"{where}: inner IPv4 length {inner.len}, decrypted {len(dec)} bytes")
        return
    isrc, idst = ipaddress.ip_address(inner.src), ipaddress.ip_address(inner.dst)
    net_a, net_b = ipaddress.ip_network(cfg["net_a"]), ipaddress.ip_network(cfg["net_b"])
    from_a = isrc in net_a and idst in net_b
    from_b = isrc in net_b and idst in net_a
    if not (from_a or from_b):
        err(f"{where}: inner packet {isrc} -> {idst} not between the protected subnets")
        return
    if from_a != (idx == 0):
        err(f"{where}: inner packet {isrc} -> {idst} in the wrong direction's SA")
        return
    payload = dec[inner.ihl * 4:]
    if inner.proto == 1:
        out["inner_icmp"] += 1
    elif inner.proto == 17 and len(payload) >= 8:
        dport = struct.unpack("!H", payload[2:4])[0]
        if dport in (cfg["udp_port_a"], cfg["udp_port_b"]):
            data = payload[8:]
            if len(data) < 4:
                err(f"{where}: datagram of {len(data)} bytes")
                return
            seq = struct.unpack("!I", data[:4])[0]
            lens = cfg["datagram_lens"]
            if len(data) != lens[seq % len(lens)]:
                err(f"{where}: datagram {seq} is {len(data)} bytes, expected {lens[seq % len(lens)]}")
                return
            if any(b != (seq * 31 + k) % 256 for k, b in enumerate(data[4:])):
                err(f"{where}: datagram {seq} content differs")
                return
            if (dport == cfg["udp_port_b"]) != from_a:
                err(f"{where}: datagram {seq} to port {dport} from {isrc}")
                return
            out["udp_ab" if from_a else "udp_ba"].append(seq)
    elif inner.proto == 6 and len(payload) >= 20:
        dport = struct.unpack("!H", payload[2:4])[0]
        data = len(payload) - (payload[12] >> 4) * 4
        if from_a and dport == cfg["tcp_port_b"]:
            out["tcp_bytes_ab"] += data
        elif from_b and dport == cfg["tcp_port_a"]:
            out["tcp_bytes_ba"] += data


def work(job):
    """Checks a chunk of frames (first index, hex lines) in a pool process."""
    global _CTX
    cfg, start, lines = job
    if _CTX is None:
        _CTX = load(cfg)
    out = empty()
    for k, line in enumerate(lines):
        check_frame(_CTX, start + k, bytes.fromhex(line), out)
    return out


def main():
    warnings.simplefilter("ignore")
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    with open(sys.argv[2]) as f:
        lines = [line.strip() for line in f if line.strip()]
    import scapy

    chunk = 500
    jobs = [(cfg, i, lines[i:i + chunk]) for i in range(0, len(lines), chunk)]
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    procs = int(os.environ.get("IPSEC_XCHECK_JOBS", min(cpus, 4)))
    if procs > 1 and len(jobs) > 1:
        import multiprocessing

        with multiprocessing.Pool(min(procs, len(jobs))) as pool:
            parts = pool.map(work, jobs)
    else:
        parts = [work(j) for j in jobs]
    total = empty()
    ab, ba = set(), set()
    for p in parts:
        for k, v in p.items():
            if k == "udp_ab":
                ab.update(v)
            elif k == "udp_ba":
                ba.update(v)
            else:
                total[k] += v
    total["udp_ab"], total["udp_ba"] = len(ab), len(ba)
    total["error_count"] = len(total["errors"])
    total["errors"] = total["errors"][:20]
    total["scapy_version"] = scapy.VERSION
    json.dump(total, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
