#!/usr/bin/env python3
"""Golden values for tests/test_watermark.cpp from an independent Python re-implementation of
retort's keyed hash (src/retort/protect/keyed_hash.h), KGW green test (kgw.h) and Gumbel
uniform (gumbel.h). It pins the portable definition: the same key and tokens must give these
bits on every machine and device. SHA-256/HMAC come from Python's hashlib/hmac.

Writes golden.txt:
  siphash <hex bytes> <hash>               SipHash-2-4, key 00..0f (the paper's test key)
  commit <key hex> <commitment>            SHA-256("retort-watermark-key-v1" || key)
  account <master hex> <id> <key hex>      HMAC-SHA-256(master, "retort-account-v1:" || id)
  hash <domain> <ctx,..> <token> <hash>    keyed_hash with the test key below
  seed <domain> <ctx,..> <hash>            keyed_seed
  stream <seed> <v> <hash>                 stream_hash (splitmix64 at index v)
  hash64 <domain> <a> <b> <hash>           keyed_hash_u64
  kgw <scheme> <h> <gamma> <ctx,..> <token> <0|1>
  gumbel <h> <ctx,..> <token> <r as %.17g>
"""
import hashlib
import hmac
import random
import struct

M = (1 << 64) - 1


def rotl(x, b):
    return ((x << b) | (x >> (64 - b))) & M


def siphash24(k0, k1, data: bytes) -> int:
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573

    def rnd():
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & M; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32)
        v2 = (v2 + v3) & M; v3 = rotl(v3, 16); v3 ^= v2
        v0 = (v0 + v3) & M; v3 = rotl(v3, 21); v3 ^= v0
        v2 = (v2 + v1) & M; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32)

    n = len(data)
    blocks = [int.from_bytes(data[i:i + 8], "little") for i in range(0, n - n % 8, 8)]
    last = int.from_bytes(data[n - n % 8:], "little") | ((n & 0xFF) << 56)
    for m in blocks + [last]:
        v3 ^= m
        rnd(); rnd()
        v0 ^= m
    v2 ^= 0xFF
    for _ in range(4):
        rnd()
    return v0 ^ v1 ^ v2 ^ v3


def hash_key(key: bytes):
    le = lambda b: int.from_bytes(b, "little")
    return le(key[0:8]) ^ le(key[16:24]), le(key[8:16]) ^ le(key[24:32])


def keyed_hash(hk, domain, ctx, tok):
    msg = struct.pack("<Q", domain) + b"".join(struct.pack("<I", t) for t in ctx) + struct.pack("<I", tok)
    return siphash24(*hk, msg)


def keyed_seed(hk, domain, ctx):
    msg = struct.pack("<Q", domain) + b"".join(struct.pack("<I", t) for t in ctx)
    return siphash24(*hk, msg)


def stream_hash(seed, v):
    z = (seed + (v + 1) * 0x9E3779B97F4A7C15) & M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    return z ^ (z >> 31)


def keyed_hash_u64(hk, domain, a, b):
    return siphash24(*hk, struct.pack("<QQQ", domain, a, b))


def threshold(gamma):
    import math
    return min(int(math.floor(math.ldexp(gamma, 64))), M)


def kgw_green(hk, scheme, h, gamma, ctx, tok):
    thr = threshold(gamma)
    if scheme == "lefthash":
        return stream_hash(keyed_seed(hk, 6, ctx[len(ctx) - h:]), tok) < thr
    prev = ctx[len(ctx) - (h - 1):]
    anchor = lambda u: keyed_seed(hk, 7, [u])
    seed = min([stream_hash(anchor(tok), tok)] + [stream_hash(anchor(u), tok) for u in prev])
    return stream_hash(seed ^ keyed_seed(hk, 8, []), tok) < thr


def gumbel_r(hk, h, ctx, tok):
    hv = stream_hash(keyed_seed(hk, 9, ctx[len(ctx) - h:]), tok)
    return ((hv >> 12) + 0.5) * 2.0**-52


KEY = bytes((7 * i + 3) & 0xFF for i in range(32))  # the test key; tests build the same bytes
out = []
for n in [0, 1, 7, 8, 15, 16, 63]:
    data = bytes(range(n))
    out.append(f"siphash {data.hex() or '-'} {siphash24(0x0706050403020100, 0x0F0E0D0C0B0A0908, data):016x}")
for key in [bytes(32), KEY]:
    out.append(f"commit {key.hex()} {hashlib.sha256(b'retort-watermark-key-v1' + key).hexdigest()}")
for acct in ["17", "alice@example.com", "0"]:
    out.append(f"account {KEY.hex()} {acct} {hmac.new(KEY, b'retort-account-v1:' + acct.encode(), hashlib.sha256).hexdigest()}")
hk = hash_key(KEY)
rng = random.Random(1234)
for _ in range(12):
    n = rng.randint(0, 6)
    ctx = [rng.randrange(49152) for _ in range(n)]
    tok = rng.randrange(49152)
    dom = rng.randint(1, 5)
    out.append(f"hash {dom} {','.join(map(str, ctx)) or '-'} {tok} {keyed_hash(hk, dom, ctx, tok):016x}")
for _ in range(8):
    n = rng.randint(0, 5)
    ctx = [rng.randrange(49152) for _ in range(n)]
    dom = rng.randint(5, 9)
    out.append(f"seed {dom} {','.join(map(str, ctx)) or '-'} {keyed_seed(hk, dom, ctx):016x}")
for seed, v in [(0, 0), (M, 49151), (1, 1)] + [(rng.getrandbits(64), rng.randrange(1 << 32)) for _ in range(6)]:
    out.append(f"stream {seed} {v} {stream_hash(seed, v):016x}")
for _ in range(4):
    a, b, d = rng.getrandbits(64), rng.getrandbits(64), rng.randint(1, 5)
    out.append(f"hash64 {d} {a} {b} {keyed_hash_u64(hk, d, a, b):016x}")
for scheme, h in [("lefthash", 1), ("lefthash", 2), ("selfhash", 4), ("selfhash", 2)]:
    for gamma in [0.25, 0.5]:
        for _ in range(12):
            ctx = [rng.randrange(49152) for _ in range(5)]
            tok = rng.randrange(49152)
            out.append(f"kgw {scheme} {h} {gamma!r} {','.join(map(str, ctx))} {tok} {int(kgw_green(hk, scheme, h, gamma, ctx, tok))}")
for h in [1, 4]:
    for _ in range(8):
        ctx = [rng.randrange(49152) for _ in range(5)]
        tok = rng.randrange(49152)
        out.append(f"gumbel {h} {','.join(map(str, ctx))} {tok} {gumbel_r(hk, h, ctx, tok):.17g}")
with open("golden.txt", "w") as f:
    f.write("\n".join(out) + "\n")
print(f"wrote {len(out)} lines")
