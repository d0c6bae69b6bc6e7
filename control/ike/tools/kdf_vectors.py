#!/usr/bin/env python3
"""Independent reference for the key-derivation and PSK AUTH tests (control/ike/src/crypto/tests.rs).

IKEv2 has no official key-derivation test vectors, so the expected values in the Rust tests were
computed by this script from RFC 7296 §2.13-2.17 using only Python's standard library (hmac,
hashlib). Run it and compare its output with the constants in the tests.
"""
import hashlib
import hmac
import struct

H = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha384": hashlib.sha384}


def prf(alg, key, data):
    return hmac.new(key, data, H[alg]).digest()


def prf_plus(alg, key, seed, length):
    out, t, n = b"", b"", 1
    while len(out) < length:
        t = prf(alg, key, t + seed + bytes([n]))
        out += t
        n += 1
    return out[:length]


def split(km, *lens):
    res, off = [], 0
    for n in lens:
        res.append(km[off:off + n])
        off += n
    return res


# Fixed inputs shared with the Rust tests.
NI = bytes(range(0x00, 0x20))
NR = bytes(range(0x20, 0x40))
G_IR = hashlib.sha256(b"g^ir").digest() * 2          # 64 octets
G_IR_NEW = hashlib.sha256(b"g^ir new").digest()      # 32 octets
SPI_I = 0x0102030405060708
SPI_R = 0x1112131415161718
PSK = b"correct horse battery staple"
REAL_MSG_1 = bytes(i & 0xFF for i in range(300))
IDI_BODY = bytes([2, 0, 0, 0]) + b"alice.example"  # ID_FQDN


def show(name, v):
    print(f"{name} = {v.hex()}")


# prf+ expansion by hand: HMAC-SHA1, key "key", seed "seed", 50 octets = T1|T2|T3[:10].
t1 = prf("sha1", b"key", b"seed" + b"\x01")
t2 = prf("sha1", b"key", t1 + b"seed" + b"\x02")
t3 = prf("sha1", b"key", t2 + b"seed" + b"\x03")
show("prfplus_sha1_T1", t1)
show("prfplus_sha1_T2", t2)
show("prfplus_sha1_T3_10", t3[:10])
assert prf_plus("sha1", b"key", b"seed", 50) == t1 + t2 + t3[:10]

# Suite A: PRF_HMAC_SHA2_256, AES-CBC-128, AUTH_HMAC_SHA2_256_128.
skeyseed = prf("sha256", NI + NR, G_IR)
show("A_skeyseed", skeyseed)
seed = NI + NR + struct.pack(">QQ", SPI_I, SPI_R)
km = prf_plus("sha256", skeyseed, seed, 3 * 32 + 2 * 32 + 2 * 16)
for n, v in zip(["sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi", "sk_pr"],
                split(km, 32, 32, 32, 16, 16, 32, 32)):
    show("A_" + n, v)
sk_d, sk_pi = split(km, 32)[0], split(km, 32, 32, 32, 16, 16, 32)[5]

# PSK AUTH of the initiator for suite A.
maced = prf("sha256", sk_pi, IDI_BODY)
octets = REAL_MSG_1 + NR + maced
show("A_auth_i", prf("sha256", prf("sha256", PSK, b"Key Pad for IKEv2"), octets))

# Child SA (ESP AES-CBC-256 + HMAC-SHA2-256-128) without PFS: ei(32) ai(32) er(32) ar(32).
ck = prf_plus("sha256", sk_d, NI + NR, 2 * (32 + 32))
for n, v in zip(["encr_i", "integ_i", "encr_r", "integ_r"], split(ck, 32, 32, 32, 32)):
    show("A_child_" + n, v)
# Same with PFS.
ck = prf_plus("sha256", sk_d, G_IR_NEW + NI + NR, 2 * (32 + 32))
for n, v in zip(["encr_i", "integ_i", "encr_r", "integ_r"], split(ck, 32, 32, 32, 32)):
    show("A_pfs_child_" + n, v)

# Suite B: PRF_HMAC_SHA2_384, AES-GCM-16-256 (32-octet key + 4-octet salt), no INTEG.
skeyseed = prf("sha384", NI + NR, G_IR)
km = prf_plus("sha384", skeyseed, seed, 3 * 48 + 2 * 36)
for n, v in zip(["sk_d", "sk_ei", "sk_er", "sk_pi", "sk_pr"], split(km, 48, 36, 36, 48, 48)):
    show("B_" + n, v)
sk_d = km[:48]
# Child SA ESP AES-GCM-16-128: 20 octets per direction, no integrity keys.
ck = prf_plus("sha384", sk_d, NI + NR, 2 * 20)
show("B_child_encr_i", ck[:20])
show("B_child_encr_r", ck[20:])
