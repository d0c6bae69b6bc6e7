#!/usr/bin/env python3
"""Independent cross-check of our ESP packets against scapy's IPsec implementation.

Driven by `engine/esp/tests/scapy_xcheck.rs`; needs scapy and cryptography
(`engine/esp/tests/requirements.txt`). Reads one JSON document on stdin, writes one on stdout;
diagnostics go to stderr.

Input:
    {"cases": [{
        "id": "aes128/sha1 outer=v4 udp esn",   # free text, echoed back
        "spi": 268435457,
        "cipher": "AES-GCM",                    # a scapy CRYPT_ALGOS name
        "enc_key": "hex",                       # for AES-GCM: key + 4-byte salt (RFC 4106 §8.1)
        "integ": "HMAC-SHA1-96",                # a scapy AUTH_ALGOS name ("NULL" for none)
        "auth_key": "hex",
        "esn": false,
        "outer_src": "198.18.0.1", "outer_dst": "198.18.0.2",
        "udp": [4500, 4500] or null,            # [source port, destination port] of our packets
        "packets": [{"outer": "hex", "inner": "hex", "seq": 1}],   # ours; seq is the full 64 bits
        "scapy_send": [{"inner": "hex", "seq": 4294967297}]        # for scapy to encrypt
    }, ...]}

For every case scapy builds a SecurityAssociation (tunnel header and, if "udp" is set, a NAT-T
UDP header, both from the same A->B direction as our packets), then

  1. for each of our packets: independent checks of the outer IPv4/IPv6 and UDP headers (lengths,
     addresses, protocol, IPv4 header checksum, UDP checksum: zero over IPv4 (RFC 3948 §2.1),
     valid over IPv6 (RFC 8200 §8.1)), SPI and sequence number; `sa.decrypt(...)` (which verifies
     the ICV / GCM tag, with the ESN high bits when "esn" is set) and a byte comparison of the
     WHOLE decrypted inner packet with "inner"; and the ESP trailer (RFC 4303 §2.4: payload
     aligned, padding bytes 1, 2, 3, ..., next header 4 or 41 matching the inner packet);
  2. for each "scapy_send" entry: `sa.encrypt(inner, ...)` with that 64-bit sequence number (low
     32 bits in the header, high 32 bits in the ICV / AAD when ESN), a self-check that scapy
     decrypts its own packet back to the inner bytes, and the bytes are returned in
     "scapy_packets" for the Rust side to decapsulate.

Output: {"scapy_version": "...", "results": [{"id", "ok", "errors": [...], "scapy_packets": [hex],
"unsupported": bool, "notes": [...]}]} in input order. "ok" is false iff "errors" is not empty or the
case is unsupported.

scapy quirk handled here: scapy's NAT-T encapsulation always writes UDP checksum 0. That is what
RFC 3948 §2.1 asks for over IPv4, but over IPv6 a zero UDP checksum is invalid (RFC 8200 §8.1,
receivers must drop it), so for outer IPv6 the checksum of scapy's packets is filled in here.
"""

import json
import os
import socket
import struct
import sys
import traceback
import warnings


def lcm(a, b):
    from math import gcd

    return a * b // gcd(a, b)


def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def describe_diff(what, got, want):
    i = first_diff(got, want)
    return (
        f"{what}: {len(got)} bytes vs expected {len(want)}, first difference at offset {i}: "
        f"got {got[i:i + 16].hex()} expected {want[i:i + 16].hex()} "
        f"(got {got.hex()}, expected {want.hex()})"
    )


class Case:
    def __init__(self, c, s):
        self.c = c
        self.s = s  # the scapy modules
        self.errors = []
        self.notes = []
        self.spi = c["spi"]
        self.esn = bool(c["esn"])
        self.v6 = ":" in c["outer_src"]
        self.udp = c.get("udp")
        self.outer_cls = s.IPv6 if self.v6 else s.IP
        tunnel = self.outer_cls(src=c["outer_src"], dst=c["outer_dst"])
        nat_t = s.UDP(sport=self.udp[0], dport=self.udp[1]) if self.udp else None
        enc_key = bytes.fromhex(c["enc_key"])
        auth_key = bytes.fromhex(c["auth_key"])
        self.sa = s.SecurityAssociation(
            s.ESP,
            spi=self.spi,
            crypt_algo=c["cipher"],
            crypt_key=enc_key if enc_key else None,
            auth_algo=c["integ"],
            auth_key=auth_key if auth_key else None,
            tunnel_header=tunnel,
            nat_t_header=nat_t,
            esn_en=self.esn,
            esn=0,
        )
        algo = self.sa.crypt_algo
        if enc_key:
            algo.check_key(self.sa.crypt_key)
        if algo.salt_size and len(self.sa.crypt_salt) != algo.salt_size:
            raise ValueError(f"salt of {len(self.sa.crypt_salt)} bytes, want {algo.salt_size}")
        if auth_key:
            self.sa.auth_algo.check_key(auth_key)
        # RFC 4303 §2.4: the payload (ciphertext + pad length + next header) is a multiple of the
        # cipher's block size and ends on a 4-byte boundary.
        self.align = lcm(algo.block_size, 4)
        self.icv_size = algo.icv_size or self.sa.auth_algo.icv_size
        self.iv_size = algo.iv_size

    def err(self, msg):
        self.errors.append(msg)

    # -- our packets ---------------------------------------------------------------------------

    def check_outer(self, where, outer, seq_lo):
        """Independent checks of the outer headers; returns (scapy's dissection, ESP bytes) or None."""
        s = self.s
        c = self.c
        if self.v6:
            if len(outer) < 40 or outer[0] >> 4 != 6:
                self.err(f"{where}: not an IPv6 packet")
                return None
            ip = s.IPv6(outer)
            if ip.plen != len(outer) - 40:
                self.err(f"{where}: IPv6 payload length {ip.plen}, packet has {len(outer) - 40} bytes after the header")
            nh, l4 = ip.nh, outer[40:]
        else:
            if len(outer) < 20 or outer[0] >> 4 != 4:
                self.err(f"{where}: not an IPv4 packet")
                return None
            ip = s.IP(outer)
            if ip.ihl != 5:
                self.err(f"{where}: outer IPv4 IHL {ip.ihl}, expected 5 (no options)")
            if ip.len != len(outer):
                self.err(f"{where}: IPv4 total length {ip.len}, packet is {len(outer)} bytes")
            if ip.frag != 0 or ip.flags.MF:
                self.err(f"{where}: outer IPv4 is a fragment (flags={ip.flags} frag={ip.frag})")
            if ip.ttl == 0:
                self.err(f"{where}: outer TTL 0")
            hdr = bytearray(outer[:20])
            hdr[10:12] = b"\0\0"
            if s.checksum(bytes(hdr)) != ip.chksum:
                self.err(f"{where}: bad outer IPv4 header checksum {ip.chksum:#06x}, expected {s.checksum(bytes(hdr)):#06x}")
            nh, l4 = ip.proto, outer[ip.ihl * 4:]
        if ip.src != s.canon(c["outer_src"]) or ip.dst != s.canon(c["outer_dst"]):
            self.err(f"{where}: outer {ip.src} -> {ip.dst}, expected {c['outer_src']} -> {c['outer_dst']}")
        if self.udp:
            if nh != socket.IPPROTO_UDP:
                self.err(f"{where}: outer next header {nh}, expected UDP (17)")
                return None
            if len(l4) < 8:
                self.err(f"{where}: truncated UDP header")
                return None
            sport, dport, ulen, uck = struct.unpack("!HHHH", l4[:8])
            if [sport, dport] != list(self.udp):
                self.err(f"{where}: UDP ports {sport} -> {dport}, expected {self.udp[0]} -> {self.udp[1]}")
            if ulen != len(l4):
                self.err(f"{where}: UDP length {ulen}, datagram is {len(l4)} bytes")
            if self.v6:
                want = s.in6_chksum(socket.IPPROTO_UDP, ip, l4[:6] + b"\0\0" + l4[8:])
                want = 0xFFFF if want == 0 else want
                if uck != want:
                    self.err(f"{where}: IPv6 UDP checksum {uck:#06x}, expected {want:#06x} (RFC 8200 §8.1)")
            elif uck != 0:
                self.err(f"{where}: IPv4 UDP checksum {uck:#06x}, RFC 3948 §2.1 says zero")
            esp = l4[8:]
        else:
            if nh != socket.IPPROTO_ESP:
                self.err(f"{where}: outer next header {nh}, expected ESP (50)")
                return None
            esp = l4
        if len(esp) < 8 + self.iv_size + self.icv_size + 2:
            self.err(f"{where}: ESP part only {len(esp)} bytes")
            return None
        spi, seq = struct.unpack("!II", esp[:8])
        if spi != self.spi:
            self.err(f"{where}: SPI {spi:#010x}, expected {self.spi:#010x}")
        if seq != seq_lo:
            self.err(f"{where}: ESP sequence number {seq}, expected {seq_lo}")
        ct_len = len(esp) - 8 - self.iv_size - self.icv_size
        if ct_len % self.align:
            self.err(f"{where}: ESP payload of {ct_len} bytes not a multiple of {self.align} (RFC 4303 §2.4)")
        return ip, esp

    def check_ours(self, i, p):
        s = self.s
        where = f"our packet #{i} (seq {p['seq']})"
        outer = bytes.fromhex(p["outer"])
        inner = bytes.fromhex(p["inner"])
        seq = p["seq"]
        hi, lo = seq >> 32, seq & 0xFFFFFFFF
        if hi and not self.esn:
            self.err(f"{where}: sequence number above 2^32 on a non-ESN SA")
            return
        checked = self.check_outer(where, outer, lo)
        if checked is None:
            return
        pkt, esp_bytes = checked
        if not pkt.haslayer(s.ESP):
            self.err(f"{where}: scapy does not see an ESP layer in {pkt.summary()}")
            return
        if bytes(pkt[s.ESP]) != esp_bytes:
            self.err(describe_diff(f"{where}: scapy's ESP layer", bytes(pkt[s.ESP]), esp_bytes))
        try:
            dec = self.sa.decrypt(self.outer_cls(outer), esn_en=self.esn, esn=hi)
        except s.IPSecIntegrityError as e:
            self.err(f"{where}: scapy rejects the ICV/tag: {e}")
            return
        except Exception as e:  # noqa: BLE001 - report anything scapy raises
            self.err(f"{where}: scapy cannot decrypt: {e!r}")
            return
        got = bytes(dec)
        if got != inner:
            self.err(describe_diff(f"{where}: decrypted inner packet", got, inner))
        want_cls = s.IPv6 if inner and inner[0] >> 4 == 6 else s.IP
        if not isinstance(dec, want_cls):
            self.err(f"{where}: scapy decoded the inner packet as {type(dec).__name__}, expected {want_cls.__name__}")
        # The trailer, which sa.decrypt() does not check (ICV already verified above).
        plain = self.sa.crypt_algo.decrypt(
            self.sa, s.ESP(esp_bytes), self.sa.crypt_key, self.icv_size, esn_en=self.esn, esn=hi
        )
        want_nh = socket.IPPROTO_IPV6 if want_cls is s.IPv6 else socket.IPPROTO_IPIP
        if plain.nh != want_nh:
            self.err(f"{where}: next header {plain.nh}, expected {want_nh}")
        if plain.padding != bytes(range(1, plain.padlen + 1)):
            self.err(f"{where}: padding {plain.padding.hex()} is not 1, 2, 3, ... (RFC 4303 §2.4)")
        if len(plain.padding) != plain.padlen:
            self.err(f"{where}: pad length {plain.padlen} larger than the payload")
        if bytes(plain.data) != inner:
            self.err(describe_diff(f"{where}: ESP payload data", bytes(plain.data), inner))
        # Both sides pad minimally: the same inner packet gives the same ESP length.
        if plain.padlen != -(len(inner) + 2) % self.align:
            self.err(f"{where}: {plain.padlen} bytes of padding, the minimum (scapy's choice) is {-(len(inner) + 2) % self.align}")

    # -- scapy's packets -----------------------------------------------------------------------

    def encrypt(self, j, e):
        s = self.s
        inner = bytes.fromhex(e["inner"])
        seq = e["seq"]
        hi, lo = seq >> 32, seq & 0xFFFFFFFF
        where = f"scapy packet #{j} (seq {seq})"
        cls = s.IPv6 if inner[0] >> 4 == 6 else s.IP
        ip_in = cls(inner)
        if bytes(ip_in) != inner:
            self.err(describe_diff(f"{where}: scapy re-serialises the inner packet differently", bytes(ip_in), inner))
        # Set the counter rather than passing seq_num: scapy treats seq_num=0 as "not given", and
        # the low 32 bits are 0 at 2^32 with ESN.
        self.sa.seq_num = lo
        out = self.sa.encrypt(ip_in, esn_en=self.esn, esn=hi)
        if self.udp and self.v6:
            fixed = s.IPv6(bytes(out))
            fixed[s.UDP].chksum = None
            raw = bytes(fixed)
            if raw[46:48] == b"\0\0":
                self.err(f"{where}: could not fill in the IPv6 UDP checksum")
        else:
            raw = bytes(out)
        # Self-check: scapy must read its own packet back (else a mismatch on the Rust side would
        # be scapy's fault, not ours).
        try:
            back = bytes(self.sa.decrypt(self.outer_cls(raw), esn_en=self.esn, esn=hi))
        except Exception as ex:  # noqa: BLE001
            self.err(f"{where}: scapy cannot decrypt its own packet: {ex!r}")
            back = None
        if back is not None and back != inner:
            self.err(describe_diff(f"{where}: scapy's own round trip", back, inner))
        esp_off = (40 if self.v6 else 20) + (8 if self.udp else 0)
        spi, seq_lo = struct.unpack("!II", raw[esp_off:esp_off + 8])
        if spi != self.spi or seq_lo != lo:
            self.err(f"{where}: scapy wrote SPI {spi:#x} seq {seq_lo}, expected {self.spi:#x} {lo}")
        return raw.hex()


def run_case(c, s):
    res = {"id": c.get("id"), "ok": False, "errors": [], "scapy_packets": [], "unsupported": False, "notes": []}
    missing = [n for n, table in ((c["cipher"], s.CRYPT_ALGOS), (c["integ"], s.AUTH_ALGOS)) if n not in table]
    if missing:
        res["unsupported"] = True
        res["notes"].append(f"scapy {s.VERSION} does not know {', '.join(missing)}")
        return res
    try:
        case = Case(c, s)
    except Exception as e:  # noqa: BLE001
        res["errors"].append(f"cannot build the scapy SA: {e!r}")
        return res
    for i, p in enumerate(c.get("packets", [])):
        try:
            case.check_ours(i, p)
        except Exception:  # noqa: BLE001
            case.err(f"our packet #{i}: exception in the checker: {traceback.format_exc()}")
    send = c.get("scapy_send")
    if send is None:
        send = [{"inner": p["inner"], "seq": k + 1} for k, p in enumerate(c.get("packets", []))]
    for j, e in enumerate(send):
        try:
            res["scapy_packets"].append(case.encrypt(j, e))
        except Exception:  # noqa: BLE001
            case.err(f"scapy packet #{j}: exception while encrypting: {traceback.format_exc()}")
            res["scapy_packets"].append("")
    res["errors"] = case.errors
    res["notes"] = case.notes
    res["ok"] = not case.errors
    return res


def load_scapy():
    class S:
        pass

    import scapy
    from scapy.compat import raw  # noqa: F401
    from scapy.layers import ipsec
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6, in6_chksum
    from scapy.utils import checksum

    s = S()
    s.VERSION = scapy.VERSION
    s.ESP, s.SecurityAssociation, s.IPSecIntegrityError = ipsec.ESP, ipsec.SecurityAssociation, ipsec.IPSecIntegrityError
    s.CRYPT_ALGOS, s.AUTH_ALGOS = ipsec.CRYPT_ALGOS, ipsec.AUTH_ALGOS
    s.IP, s.IPv6, s.UDP, s.in6_chksum, s.checksum = IP, IPv6, UDP, in6_chksum, checksum

    def canon(addr):
        # scapy prints IPv6 addresses in compressed form; compare canonical forms.
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        return socket.inet_ntop(fam, socket.inet_pton(fam, addr))

    s.canon = canon
    return s


_SCAPY = None


def worker(c):
    """Runs one case in a pool process (scapy imported once per process)."""
    global _SCAPY
    if _SCAPY is None:
        warnings.simplefilter("ignore")  # cryptography's deprecation warnings for 3DES/MD5
        _SCAPY = load_scapy()
    return run_case(c, _SCAPY)


def main():
    warnings.simplefilter("ignore")
    doc = json.load(sys.stdin)
    cases = doc["cases"]
    s = load_scapy()
    # scapy is slow (a few ms per packet): spread the cases over the CPUs we may use. Results keep
    # the input order. IPSEC_XCHECK_JOBS=1 runs everything in this process.
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    jobs = int(os.environ.get("IPSEC_XCHECK_JOBS", min(cpus, 4)))
    if jobs > 1 and len(cases) > 1:
        import multiprocessing

        with multiprocessing.Pool(min(jobs, len(cases))) as pool:
            results = pool.map(worker, cases, chunksize=4)
    else:
        results = [run_case(c, s) for c in cases]
    json.dump({"scapy_version": s.VERSION, "results": results}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
