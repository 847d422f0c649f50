#!/usr/bin/env python3
"""Golden log-tails for tests/test_stats.cpp, computed with mpmath at 60 digits.

Writes golden.txt, one case per line:
  binom k n p log_sf          log P[Bin(n, p) >= k]   (exact finite sum)
  gamma x shape log_sf        log P[Gamma(shape, 1) >= x]   (mpmath.gammainc, regularized)
  normal z log_sf             log P[N(0,1) >= z]
  ks d_n n p                  Kolmogorov asymptotic p with Stephens' correction at D = d_n
Run: pip install mpmath; python3 make_golden.py
"""
import mpmath as mp

mp.mp.dps = 60


def binom_log_sf(k, n, p):
    p = mp.mpf(p)
    if k <= 0:
        return mp.mpf(0)
    if k > n:
        return -mp.inf
    # Sum the shorter side exactly, in high precision (no cancellation problems at 60 digits).
    if k > n * p:
        s = mp.fsum(mp.binomial(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))
    else:
        s = 1 - mp.fsum(mp.binomial(n, j) * p**j * (1 - p) ** (n - j) for j in range(0, k))
    return mp.log(s)


def gamma_log_sf(x, a):
    return mp.log(mp.gammainc(mp.mpf(a), mp.mpf(x), mp.inf, regularized=True))


def normal_log_sf(z):
    return mp.log(mp.erfc(mp.mpf(z) / mp.sqrt(2)) / 2)


def ks_p(d, n):
    sn = mp.sqrt(n)
    lam = (sn + mp.mpf("0.12") + mp.mpf("0.11") / sn) * mp.mpf(d)
    return 2 * mp.nsum(lambda k: (-1) ** (k - 1) * mp.exp(-2 * k * k * lam * lam), [1, mp.inf])


lines = []
binom_cases = [
    (0, 10, 0.25), (1, 10, 0.25), (3, 10, 0.25), (10, 10, 0.25), (11, 10, 0.25),
    (25, 100, 0.25), (26, 100, 0.25), (40, 100, 0.25), (60, 100, 0.25), (100, 100, 0.25),
    (1, 1, 0.5), (5, 1000, 0.001), (1, 1000, 1e-6), (50, 200, 0.5), (120, 200, 0.5),
    (400, 500, 0.25), (500, 500, 0.25),    # p = 0.25^500 ~ 1e-301
    (64300, 248200, 0.25), (64230, 248200, 0.25), (62000, 248200, 0.25),
    (30, 1000, 0.5), (900, 1000, 0.5), (700, 1000, 0.25),
]
for k, n, p in binom_cases:
    lines.append(f"binom {k} {n} {p!r} {mp.nstr(binom_log_sf(k, n, p), 20)}")
gamma_cases = [
    (0.5, 1), (1, 1), (5, 1), (50, 1), (690, 1),
    (10, 10), (12, 10), (30, 10), (5, 10), (100, 20), (200, 50),
    (0.5, 0.5), (3, 0.5),
    (1000, 1000), (1100, 1000), (1500, 1000), (900, 1000),
    (400, 100), (1000, 200),   # far tails, p ~ 1e-100 .. 1e-300
    (110000, 100000), (105000, 100000),
]
for x, a in gamma_cases:
    lines.append(f"gamma {x!r} {a!r} {mp.nstr(gamma_log_sf(x, a), 20)}")
for z in [-3, -1, 0, 1, 2.5, 4, 8, 20, 29.5, 30, 35, 40]:
    lines.append(f"normal {z!r} {mp.nstr(normal_log_sf(z), 20)}")
for d, n in [(0.05, 100), (0.1, 100), (0.2, 50), (0.3, 20), (0.02, 1000)]:
    lines.append(f"ks {d!r} {n} {mp.nstr(ks_p(d, n), 20)}")

with open("golden.txt", "w") as f:
    f.write("\n".join(lines) + "\n")
print(f"wrote {len(lines)} cases")
