#!/usr/bin/env python3
"""The crawl monitor against benign traffic and four crawlers, on a real `retort serve` on loopback.

    python3 bench/monitor_eval.py [--retort build/retort] [--out bench/results/monitor_eval_DATE.json]

1. Calibration: a server with the monitor uncalibrated; the calibration half of data/traffic/benign.jsonl
   (whole accounts: every other account of each kind, the first of each kind included) is replayed; then
   `retort monitor calibrate` sets the thresholds from those accounts only.
2. Evaluation: a fresh server with that calibration; the other half of the benign accounts is replayed,
   mixed in time with four crawlers shaped like `retort capture --teacher-url` requests:
     crawler-plain      the shipped prompts (data/prompts/train.jsonl), `--signal text` (no logprobs);
     crawler-logprobs   the same prompts with top_logprobs 20;
     crawler-templated  data/traffic/templated_crawler.jsonl (templates over many topics);
     hydra-00..19       the shipped prompts split over 20 accounts (line i to hydra-(i % 20)), at random
                        times over the two hours, among the benign users.
Requests carry their time in the traffic as X-Retort-Replay-Time-Ms (the server runs with
monitor_replay_clock for this evaluation only), so two hours replay in minutes; completions are capped
at a few tokens (max_completion_tokens) since the monitor reads prompts and parameters, not answers.
Every request goes through the official openai client. Prints and writes JSON: requests until each
crawler is flagged, the hydra cluster, false flags over the benign accounts, and a ROC over score
thresholds (max score per account; the monitor flags at 1).
"""
import argparse
import collections
import datetime
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from retort_traffic import Server, create_keys, replay, split_accounts  # noqa: E402


def log(*a):
    print("monitor_eval:", *a, file=sys.stderr, flush=True)


def crawler_requests(account, prompts, start_t, every_s, logprobs, rng):
    """`retort capture --teacher-url` keeps 4 requests in flight; each next one leaves when one of them ends,
    so its requests arrive about every_s apart with exponential scatter (answers differ in length)."""
    out, t = [], start_t
    for p in prompts:
        params = {"max_tokens": 256, "seed": rng.randrange(-2**63, 2**63)}
        if logprobs:
            params.update(logprobs=True, top_logprobs=20)
        out.append({"account": account, "t": t, "user": p, "params": params})
        t += rng.expovariate(1 / every_s)
    return out


def read_prompts(path):
    with open(path) as f:
        return [json.loads(l)["prompt"] for l in f if l.strip()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--retort", default=os.path.join(ROOT, "build", "retort"))
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--crawler-limit", type=int, default=200,
                    help="requests each single-account crawler sends at most (not flagged by then: reported so)")
    ap.add_argument("--max-completion-tokens", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "monitor_eval_%s.json" % datetime.date.today()))
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    retort = os.path.abspath(a.retort)
    rng = random.Random(16)
    work = tempfile.mkdtemp(prefix="monitor_eval_")
    os.makedirs(os.path.join(work, "models"), exist_ok=True)
    cache = os.path.join(os.environ.get("RETORT_HOME", os.path.expanduser("~/.cache/retort")), "models")
    model = a.model if os.path.exists(a.model) else os.path.join(cache, a.model + ".gguf")
    with open(os.path.join(ROOT, "data", "traffic", "benign.jsonl")) as f:
        benign = [json.loads(l) for l in f if l.strip()]
    cal_accounts, eval_accounts = split_accounts(benign)
    base = {"model": model, "parallel": 8, "ctx_size": 4096, "watermark": "none", "monitor": True,
            "monitor_replay_clock": True, "max_completion_tokens": a.max_completion_tokens}
    t_start = time.time()

    # 1. Calibration traffic, then the thresholds.
    db1 = os.path.join(work, "calibration.db")
    cal_reqs = [r for r in benign if r["account"] in cal_accounts]
    keys = create_keys(retort, work, db1, sorted(cal_accounts))
    srv = Server(retort, work, db1, base)
    log("calibration: %d requests of %d accounts on port %d" % (len(cal_reqs), len(cal_accounts), srv.port))
    cal_errors = replay(srv.url, keys, cal_reqs, progress=lambda n, t: log("%d / %d requests" % (n, t)))
    srv.stop()
    acc_file = os.path.join(work, "calibration-accounts.txt")
    with open(acc_file, "w") as f:
        f.write("\n".join(sorted(cal_accounts)) + "\n")
    cal_path = os.path.join(work, "calibration.json")
    out = subprocess.run([retort, "monitor", "calibrate", "--db", db1, "--accounts-file", acc_file, "--out", cal_path,
                          "--model-name", a.model], capture_output=True, text=True, check=True)
    log(out.stdout)
    calibration = json.load(open(cal_path))

    # 2. Evaluation traffic with the crawlers mixed in.
    train = read_prompts(os.path.join(ROOT, "data", "prompts", "train.jsonl"))
    templated = read_prompts(os.path.join(ROOT, "data", "traffic", "templated_crawler.jsonl"))
    ev_reqs = [r for r in benign if r["account"] in eval_accounts]
    lim = a.crawler_limit
    crawl = (crawler_requests("crawler-plain", train[:lim], 1200, 2.0, False, rng)
             + crawler_requests("crawler-logprobs", train[:lim], 2400, 2.0, True, rng)
             + crawler_requests("crawler-templated", templated[:lim], 600, 2.0, False, rng))
    hydra_times = sorted(rng.uniform(300, 7000) for _ in train)
    for i, p in enumerate(train):
        crawl.append({"account": "hydra-%02d" % (i % 20), "t": hydra_times[i], "user": p,
                      "params": {"max_tokens": 256, "seed": rng.randrange(-2**63, 2**63)}})
    crawler_accounts = sorted({r["account"] for r in crawl})
    db2 = os.path.join(work, "evaluation.db")
    keys = create_keys(retort, work, db2, sorted(eval_accounts) + crawler_accounts)
    srv = Server(retort, work, db2, dict(base, monitor_calibration=cal_path))
    log("evaluation: %d benign requests of %d accounts and %d crawler requests of %d accounts" %
        (len(ev_reqs), len(eval_accounts), len(crawl), len(crawler_accounts)))
    t_eval = time.time()
    ev_errors = replay(srv.url, keys, ev_reqs + crawl, progress=lambda n, t: log("%d / %d requests" % (n, t)))
    eval_seconds = time.time() - t_eval
    srv.stop()
    report = json.loads(subprocess.run([retort, "monitor", "report", "--db", db2, "--json", "--html",
                                        os.path.join(work, "monitor_report.html")],
                                       capture_output=True, text=True, check=True).stdout.split("\nwrote ")[0])
    verdicts = report["verdicts"]
    by_subject = {v["subject"]: v for v in verdicts}
    sent = collections.Counter(r["account"] for r in ev_reqs + crawl)

    def summary(v):
        return {"requests": v["requests"], "flagged": v["flagged"], "flagged_at_request": v["flagged_at_request"],
                "max_score": round(v["max_score"], 3),
                "reasons": [r["text"] for r in (v["flag_reasons"] or v["reasons"])]}

    crawlers = {}
    for c in ["crawler-plain", "crawler-logprobs", "crawler-templated"]:
        crawlers[c] = dict(summary(by_subject[c]), sent=sent[c])
    hydra_clusters = [v for v in verdicts if v["cluster"] and any(m.startswith("hydra-") for m in v["members"])]
    hydra_clusters.sort(key=lambda v: -len(v["members"]))
    hydra = {"accounts": 20, "sent": sum(sent[a] for a in crawler_accounts if a.startswith("hydra-")),
             "flagged_alone": sorted(a for a in crawler_accounts if a.startswith("hydra-") and by_subject[a]["flagged"])}
    if hydra_clusters:
        c = hydra_clusters[0]
        hydra.update(cluster=summary(c), members=c["members"],
                     hydra_members=sum(m.startswith("hydra-") for m in c["members"]),
                     benign_members=[m for m in c["members"] if not m.startswith("hydra-")], links=c["links"][:5])
    benign_v = [by_subject[a] for a in sorted(eval_accounts) if a in by_subject]
    false_flags = {v["subject"]: summary(v) for v in benign_v if v["flagged"]}
    # A flagged cluster flags its members: a benign member of one is a false flag too.
    for v in verdicts:
        if v["cluster"] and v["flagged"]:
            for m in v["members"]:
                if m in eval_accounts and m not in false_flags:
                    false_flags[m] = dict(summary(by_subject[m]), flagged_by=v["subject"])
    benign_clusters = [v for v in verdicts if v["cluster"] and not any(m.startswith(("hydra-", "crawler-")) for m in v["members"])]
    # ROC: each benign account and each crawler (the hydra as its best cluster) at threshold t on max_score.
    positives = [by_subject[c]["max_score"] for c in crawlers] + [hydra_clusters[0]["max_score"] if hydra_clusters else 0]
    # A benign account's score is its own or that of the highest-scoring cluster it is in.
    cluster_score = collections.defaultdict(float)
    for v in verdicts:
        if v["cluster"]:
            for m in v["members"]:
                cluster_score[m] = max(cluster_score[m], v["max_score"])
    negatives = [max(v["max_score"], cluster_score[v["subject"]]) for v in benign_v]
    roc = []
    for t in [0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2, 3, 5, 10]:
        roc.append({"threshold": t, "false_positive_rate": sum(s >= t for s in negatives) / max(1, len(negatives)),
                    "detection_rate": sum(s >= t for s in positives) / len(positives)})
    result = {
        "date": str(datetime.date.today()),
        "command": "python3 bench/monitor_eval.py",
        "model": a.model,
        "calibration": {"accounts": len(cal_accounts), "requests": len(cal_reqs), "errors": cal_errors,
                        "split": "whole accounts: every third within each kind by size, first of each kind to "
                                 "calibration",
                        "account_names": sorted(cal_accounts),
                        "threshold": calibration["threshold"]},
        "evaluation": {"benign_accounts": len(eval_accounts), "benign_requests": len(ev_reqs),
                       "crawler_limit": lim, "max_completion_tokens": a.max_completion_tokens,
                       "crawler_requests": len(crawl), "errors": ev_errors, "seconds": round(eval_seconds, 1)},
        "crawlers": crawlers, "hydra": hydra,
        "benign": {"accounts": len(benign_v), "false_flags": false_flags, "false_flag_count": len(false_flags),
                   "clusters_of_benign_accounts": [v["members"] for v in benign_clusters]},
        "roc": roc,
        "wall_seconds": round(time.time() - t_start, 1),
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(a.out + ".tmp", a.out)
    print(json.dumps(result, indent=1))
    if a.keep:
        log("work directory kept: " + work)
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
