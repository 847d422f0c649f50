#!/usr/bin/env python3
"""Summary of bench/run_antidistill_tradeoff.sh: one row per setting (the teacher under it and the student
distilled from its traces) and, for each antidistillation row, the temperature-sampling curve read at the
same teacher quality.

    python3 bench/antidistill_tradeoff_summary.py --runs DIR --settings "temp_1.0 ... ad_0.05" --out OUT.json

Matching: teacher quality is the held-out NLL of the teacher's own answers under the plain teacher (the
x-axis). The temperature rows, sorted by it, are interpolated linearly at each antidistillation row's value
(student NLL, top-1 agreement, KL, tasks); outside their range the nearest row is used and the match is
marked "outside". delta = antidistillation − temperature at matched teacher quality: a student that is
worse has a higher NLL and KL (delta > 0) and a lower agreement (delta < 0). Writes OUT.json and OUT.md.
"""
import argparse
import datetime
import json
import os


def student_row(path):
    st = json.load(open(path))
    m = st["student"]["metrics"]
    tasks = st.get("tasks", {}).get("overall", {})
    return {"nll": m["nll"], "top1_agree": m["top1_agree"], "kl": m["kl"], "positions": m["positions"],
            "tasks": tasks.get("student"), "tasks_correct": tasks.get("student_correct"), "tasks_n": tasks.get("n")}


def interpolate(curve, x, key):
    """curve: [(x_i, row_i)] sorted by x. Linear in x between the two rows around it."""
    if x <= curve[0][0]:
        return curve[0][1][key], "outside" if x < curve[0][0] else "exact"
    if x >= curve[-1][0]:
        return curve[-1][1][key], "outside" if x > curve[-1][0] else "exact"
    for (x0, r0), (x1, r1) in zip(curve, curve[1:]):
        if x0 <= x <= x1:
            w = (x - x0) / (x1 - x0) if x1 > x0 else 0.0
            return r0[key] + w * (r1[key] - r0[key]), "interpolated"
    raise AssertionError


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", required=True)
    ap.add_argument("--settings", required=True)
    ap.add_argument("--setting", default="")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rows = []
    for s in a.settings.split():
        t = json.load(open(os.path.join(a.runs, f"teacher_{s}.json")))
        tt = t["teacher"]
        rows.append({
            "setting": s,
            "kind": "replicate" if "@" in s else "antidistillation" if s.startswith("ad_") else "temperature",
            "temperature": t["setting"]["temperature"],
            "lambda": t["setting"]["lambda"],
            "teacher": {"heldout_nll": tt["heldout_nll"], "top1_agreement": tt["top1_agreement"],
                        "repeated_4gram": tt["repeated_4gram"],
                        "tasks": tt.get("tasks", {}).get("overall", {}).get("accuracy"),
                        "tasks_correct": tt.get("tasks", {}).get("overall", {}).get("correct"),
                        "heldout_tokens": tt["heldout_tokens"], "sample": tt["sample"]},
            "traces": t["traces"],
            "proxy_batch": t.get("proxy_batch"),
            "student": student_row(os.path.join(a.runs, f"student_{s}.json")),
        })
    curve = sorted(((r["teacher"]["heldout_nll"], r["student"] | {"teacher_top1": r["teacher"]["top1_agreement"],
                                                                   "teacher_tasks": r["teacher"]["tasks"]})
                    for r in rows if r["kind"] == "temperature"), key=lambda p: p[0])
    matched = []
    for r in rows:
        if r["kind"] != "antidistillation" or not curve:
            continue
        x = r["teacher"]["heldout_nll"]
        m = {"setting": r["setting"], "teacher_heldout_nll": x}
        for key in ("nll", "top1_agree", "kl", "tasks", "teacher_top1", "teacher_tasks"):
            if any(c[1].get(key) is None for c in curve):
                continue
            v, how = interpolate(curve, x, key)
            m["temperature_at_same_teacher_nll_" + key] = v
            m["match"] = how
        m["delta_student_nll"] = r["student"]["nll"] - m["temperature_at_same_teacher_nll_nll"]
        m["delta_student_top1"] = r["student"]["top1_agree"] - m["temperature_at_same_teacher_nll_top1_agree"]
        m["delta_student_kl"] = r["student"]["kl"] - m["temperature_at_same_teacher_nll_kl"]
        matched.append(m)
    # The noise: a setting drawn again with another seed (SETTING@SEED) against its first draw.
    noise = []
    for r in rows:
        if r["kind"] != "replicate":
            continue
        base = next((b for b in rows if b["setting"] == r["setting"].split("@")[0]), None)
        if base:
            noise.append({"setting": r["setting"], "of": base["setting"],
                          "delta_teacher_nll": r["teacher"]["heldout_nll"] - base["teacher"]["heldout_nll"],
                          "delta_student_nll": r["student"]["nll"] - base["student"]["nll"],
                          "delta_student_top1": r["student"]["top1_agree"] - base["student"]["top1_agree"],
                          "delta_student_kl": r["student"]["kl"] - base["student"]["kl"]})
    out = {"bench": "antidistill_tradeoff", "date": datetime.date.today().isoformat(),
           "command": "bash bench/run_antidistill_tradeoff.sh", "setting": a.setting, "rows": rows,
           "matched": matched, "noise": noise}
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1)
    os.replace(tmp, a.out)

    def f3(x):
        return "" if x is None else "%.3f" % x

    lines = ["| setting | teacher NLL of own answers | teacher top-1 | teacher tasks | student NLL | student top-1 | "
             "student KL | student tasks |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        name = ("τ %.2f" % r["temperature"]) if r["kind"] != "antidistillation" else ("antidistillation λ %g (τ 1)" % r["lambda"])
        if r["kind"] == "replicate":
            name += ", seed " + r["setting"].split("@")[1]
        tt, st = r["teacher"], r["student"]
        lines.append(f"| {name} | {f3(tt['heldout_nll'])} | {f3(tt['top1_agreement'])} | {f3(tt['tasks'])} | "
                     f"{f3(st['nll'])} | {f3(st['top1_agree'])} | {f3(st['kl'])} | {f3(st['tasks'])} |")
    lines += ["", "| antidistillation | teacher NLL | student NLL: AD / temperature at that teacher NLL (delta) | "
              "student top-1 (delta) | student KL (delta) | match |", "|---|---:|---|---|---|---|"]
    for m in matched:
        r = next(r for r in rows if r["setting"] == m["setting"])
        lines.append(f"| λ {r['lambda']:g} | {f3(m['teacher_heldout_nll'])} | {f3(r['student']['nll'])} / "
                     f"{f3(m['temperature_at_same_teacher_nll_nll'])} ({m['delta_student_nll']:+.3f}) | "
                     f"{f3(r['student']['top1_agree'])} ({m['delta_student_top1']:+.3f}) | "
                     f"{f3(r['student']['kl'])} ({m['delta_student_kl']:+.3f}) | {m['match']} |")
    for n in noise:
        lines.append(f"\nNoise: {n['setting']} against {n['of']} (the same setting, another seed): student NLL "
                     f"{n['delta_student_nll']:+.3f}, top-1 {n['delta_student_top1']:+.3f}, KL {n['delta_student_kl']:+.3f}.")
    md = os.path.splitext(a.out)[0] + ".md"
    with open(md + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(md + ".tmp", md)
    print("\n".join(lines))
    print(f"wrote {a.out} and {md}")


if __name__ == "__main__":
    main()
