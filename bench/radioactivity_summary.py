#!/usr/bin/env python3
"""Summarize bench/run_radioactivity_fractions.sh: one row per (model, test) with the master key's exact p and
the counts behind it, and the null across keys: the same observations scored with ACCOUNTS unrelated account
keys (derived from our master key, never used to watermark anything), whose p-values must be uniform.

The reported p = P[Bin(T, γ) >= green] is discrete, hence super-uniform under the null, so (as in
bench/audit_controls.cpp) the two-sided KS is run on the randomized p = P[S > s] + U·P[S = s] (exactly
U(0,1) when the scored units are fair coins) and the one-sided D+ = sup(F_n(u) − u) on the reported p.

    python3 bench/radioactivity_summary.py --runs DIR --out results.json   (a .md table is written beside it)
"""
import argparse
import datetime
import json
import math
import os
import platform
import random

GAMMA = 0.25  # KGW γ of the bench (the `--watermark kgw` default)


def log_binom_pmf(k, n, p):
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p) +
            (n - k) * math.log1p(-p))


def binom_sf_ge(k, n, p):
    """P[Bin(n, p) >= k], summed in log space from the top (n is at most a few thousand here)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    terms = [log_binom_pmf(i, n, p) for i in range(k, n + 1)]
    m = max(terms)
    return min(1.0, math.exp(m) * sum(math.exp(t - m) for t in terms))


def randomized_p(green, n, u):
    return binom_sf_ge(green + 1, n, GAMMA) + u * math.exp(log_binom_pmf(green, n, GAMMA))


def kolmogorov_q(lam):
    """P[K > lam] for the Kolmogorov distribution (asymptotic two-sided KS)."""
    if lam < 0.2:
        return 1.0
    return max(0.0, min(1.0, 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))))


def ks_uniform(ps):
    n = len(ps)
    xs = sorted(ps)
    d_plus = max((i + 1) / n - x for i, x in enumerate(xs))
    d_minus = max(x - i / n for i, x in enumerate(xs))
    d = max(d_plus, d_minus)
    sq = math.sqrt(n)
    return {"n": n, "D": d, "p": kolmogorov_q((sq + 0.12 + 0.11 / sq) * d), "D_plus": d_plus,
            "p_plus": math.exp(-2 * n * d_plus * d_plus)}


MODELS = {
    "f000": ("student, 0% watermarked (control student)", 0),
    "f001": ("student, 1% watermarked", 1),
    "f005": ("student, 5% watermarked", 5),
    "f020": ("student, 20% watermarked", 20),
    "f100": ("student, 100% watermarked", 100),
    "para100": ("student, 100% watermarked, paraphrased first (attack)", 100),
    "teacher": ("the clean teacher (control model)", None),
    "gemma": ("Gemma 3 270M, other family and tokenizer (control model)", None),
}
TESTS = ["open_served", "open_all", "closed", "closed_seen"]
CONTROLS = {"f000", "teacher", "gemma"}


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--setting", default="")
    a = ap.parse_args()
    rng = random.Random(20261204)
    rows = []
    for model, (label, frac) in MODELS.items():
        for test in TESTS:
            path = os.path.join(a.runs, "tests", f"{model}_{test}.json")
            if not os.path.exists(path):
                continue
            r = json.load(open(path))
            t = r["test"]
            row = {"model": model, "label": label, "watermarked_percent": frac, "test": test,
                   "control": model in CONTROLS, "scored": r["counts"]["scored"], "counts": r["counts"],
                   "enough_evidence": r["enough_evidence"], "green_rate": r["score_rate"],
                   "p": t["p_value"], "log10_p": t["log10_p"], "pairs_needed": r["pairs_needed_for_target"]}
            null_p, null_rand = [], []
            for acc in r.get("accounts", []):
                if acc["too_short"]:
                    continue
                n, green = acc["tokens_scored"], int(round(acc["score"]))
                null_p.append(acc["p_value"])
                null_rand.append(randomized_p(green, n, rng.random()))
            if null_p:
                ks = ks_uniform(null_rand)
                row["null_keys"] = {"keys": len(null_p), "ks_randomized_D": ks["D"], "ks_randomized_p": ks["p"],
                                    "reported_D_plus": ks_uniform(null_p)["D_plus"],
                                    "reported_p_plus": ks_uniform(null_p)["p_plus"], "min_p": min(null_p),
                                    "below_1e-3": sum(p < 1e-3 for p in null_p)}
            rows.append(row)
    # The target: no control model or control student (our master key) below 1e-3. The unrelated keys
    # are a uniformity check instead: across thousands of them about 1e-3 of the p-values fall below 1e-3.
    null_ps = [r["p"] for r in rows if r["control"] and r["p"] is not None]
    key_ps = sum((r["null_keys"]["keys"] for r in rows if "null_keys" in r), 0)
    key_below = sum((r["null_keys"]["below_1e-3"] for r in rows if "null_keys" in r), 0)
    res = {"bench": "radioactivity_fractions", "date": datetime.date.today().isoformat(),
           "machine": f"{cpu_model()}, {os.cpu_count()} cores", "setting": a.setting,
           "command": "bash bench/run_radioactivity_fractions.sh", "rows": rows,
           "controls_min_p": min(null_ps) if null_ps else None,
           "controls_below_1e-3": sum(p < 1e-3 for p in null_ps),
           "unrelated_key_tests": key_ps, "unrelated_key_tests_below_1e-3": key_below}
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, a.out)

    def fmt_p(r):
        if not r["enough_evidence"]:
            return f"not enough ({r['scored']} units)"
        return f"1e{r['log10_p']:.1f}" if r["log10_p"] < -3 else f"{r['p']:.3g}"

    lines = ["| model | test | scored units | green rate (γ 0.25) | p (our key) | null keys: KS rand. p / D+ p / min p |",
             "|---|---|---:|---:|---:|---|"]
    for r in rows:
        nk = r.get("null_keys")
        nks = (f"{nk['ks_randomized_p']:.2f} / {nk['reported_p_plus']:.2f} / {nk['min_p']:.3g} ({nk['keys']} keys)"
               if nk else "—")
        lines.append(f"| {r['label']} | {r['test']} | {r['scored']} | {r['green_rate']:.4f} | {fmt_p(r)} | {nks} |")
    lines.append("")
    lines.append(f"Controls with our key (control models and the control student): min p {res['controls_min_p']}, "
                 f"below 1e-3: {res['controls_below_1e-3']}. Unrelated keys on every model: {key_below} of {key_ps} "
                 f"tests below 1e-3 (a valid p-value gives at most {key_ps / 1000:.1f} on average).")
    md = os.path.splitext(a.out)[0] + ".md"
    with open(md + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(md + ".tmp", md)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
