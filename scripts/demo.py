#!/usr/bin/env python3
"""`retort demo`: the whole story in one command, on loopback.

A provider serves the default teacher behind `retort serve` (per-account watermarks, the crawl monitor, a
fresh ledger); its users' traffic is replayed from data/traffic/benign.jsonl while a distiller harvests the
teacher with `retort capture --teacher-url` — one account, and a variant that spreads its requests over
several accounts. The monitor flags them; the distiller trains a student on what it harvested anyway (the
provider only flags, and keeps every answer watermarked with the account's own key: the evidence). The
provider's investigator then audits the student — radioactivity (open and closed), which account it learned
from, provenance against an unrelated model — with a clean control student beside it (the same recipe on the
teacher's unwatermarked answers) and writes the case file.

    retort demo [--out DIR] [--fast]          (retort runs this script; python3 scripts/demo.py --retort ... too)

Everything lives in DIR (default $RETORT_HOME/runs/demo, or runs/demo-fast with --fast); the models come from
the model cache (scripts/setup.sh puts them there). A step whose output exists is not run again, so an
interrupted demo resumes; --fresh starts over. The monitor's calibration (benign traffic of other accounts
replayed through a server, then `retort monitor calibrate`) ships in data/monitor/ for the default teacher
(`python3 scripts/demo.py --make-calibration` remakes it); for another teacher it is made on the first run and
cached in $RETORT_HOME/monitor/.
"""
import argparse
import gzip
import hashlib
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from retort_traffic import (Server, T0_MS, create_keys, read_jsonl, replay,  # noqa: E402
                            split_accounts, write_jsonl)

TEACHER = "smollm2-135m-instruct"
CONTROL_MODEL = "gemma3-270m"

# What each mode does. Harvest: the distiller (one account) asks the even lines of data/prompts/train.jsonl,
# the hydra the odd ones over `hydra_accounts` accounts (sample i with key i mod n). The benign replay is the
# evaluation half of the shipped traffic (the calibration half set the thresholds), `benign_share` of its
# accounts (each account's first `benign_cap` requests: the batch user's 760 would be half the replay's CPU
# and show nothing its first 240 do not), sent at `speedup` × its recorded pace. The monitor sees each
# replayed request at its recorded time
# (X-Retort-Replay-Time-Ms) and the distillers' requests at their real pace on the same clock
# (monitor_clock_origin_ms: replay time 0 is when the server starts). Accounts are judged on their own
# requests, so every account is judged at the pace it really has; the benign users' compressed sending only
# shares the CPU.
MODES = {
    "full": dict(distiller_prompts=204, hydra_prompts=204, hydra_accounts=8, max_tokens=48, benign_share=0.5,
                 benign_cap=240, epochs=2, speedup=30, hydra_student=True, closed_samples=1, provenance_budget=400),
    "fast": dict(distiller_prompts=96, hydra_prompts=96, hydra_accounts=4, max_tokens=48, benign_share=0.34,
                 benign_cap=240, epochs=2, speedup=60, hydra_student=False, closed_samples=1, provenance_budget=200),
    # The chain in miniature for tests (tests/test_demo.py): tiny models, every link, seconds.
    "mini": dict(distiller_prompts=24, hydra_prompts=16, hydra_accounts=4, max_tokens=16, benign_share=0.1,
                 benign_cap=240, epochs=1, speedup=2000, hydra_student=False, closed_samples=1,
                 provenance_budget=50),
}

T_START = time.time()
# The monitor calibration's recipe (calibrate_monitor and the replay above it). Bump it when either changes, and
# remake data/monitor/ with `python3 scripts/demo.py --make-calibration`: a shipped calibration of another
# version is not used. 2: accounts join the linking from 6 requests, and link while joining. 3: the
# turn-taking test (a group's timing) and its benign p.
CALIBRATION_VERSION = 3


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def say(msg, *, step=None):
    t = time.time() - T_START
    prefix = "[demo %2d:%02d]" % (t // 60, t % 60)
    if step:
        print("\n%s == %s ==" % (prefix, step), flush=True)
    if msg:
        print("%s %s" % (prefix, msg), flush=True)


class Demo:
    def __init__(self, a):
        self.a = a
        self.retort = os.path.abspath(a.retort)
        self.mode_name = "mini" if a.mini else "fast" if a.fast else "full"
        self.mode = MODES[self.mode_name]
        self.teacher_spec, self.control_spec = a.teacher, a.control_model
        self.home = os.environ.get("RETORT_HOME") or os.path.expanduser("~/.cache/retort")
        self.out = os.path.abspath(a.out or os.path.join(self.home, "runs", "demo-fast" if a.fast else "demo"))
        self.threads = a.threads
        self.provider = os.path.join(self.out, "provider")  # the provider's RETORT_HOME: master key, serve.db
        self.db = os.path.join(self.provider, "serve.db")
        self.summary = {"mode": self.mode_name, "out": self.out, "settings": self.mode,
                        "teacher": a.teacher, "control_model": a.control_model}
        self.step_seconds = {}  # log name -> seconds its retort commands took (this run; resumed steps absent)

    # ---- helpers -------------------------------------------------------------------------------------------
    def path(self, *p):
        return os.path.join(self.out, *p)

    def model(self, name):
        if os.path.exists(name):
            return os.path.abspath(name)
        p = os.path.join(self.home, "models", name + ".gguf")
        if not os.path.exists(p):
            raise SystemExit("demo: %s is not in the model cache (%s); run `bash scripts/setup.sh` first"
                             % (name, p))
        return p

    def spec(self, name):
        """How to name a model to retort: its cache name when it is one (reports read better), else its path."""
        self.model(name)  # exists, or a clear error
        return os.path.abspath(name) if os.path.exists(name) else name

    def run(self, args, what, env=None, log=None):
        """Runs a retort subcommand; its output goes to logs/<log>.log; a failure stops the demo naming it."""
        os.makedirs(self.path("logs"), exist_ok=True)
        log_path = self.path("logs", (log or args[0]) + ".log")
        with open(log_path, "a") as f:
            f.write("$ retort %s\n" % " ".join(args))
            f.flush()
            t = time.time()
            r = subprocess.run([self.retort] + args, stdout=subprocess.PIPE, stderr=f, text=True,
                               env=dict(os.environ, **(env or {})))
            name = log or args[0]
            self.step_seconds[name] = round(self.step_seconds.get(name, 0) + time.time() - t, 1)
        if r.returncode != 0:
            with open(log_path) as f:
                tail = f.read()[-1500:]
            raise SystemExit("demo: %s failed (exit %d): retort %s\n--- %s ---\n%s" %
                             (what, r.returncode, " ".join(args), log_path, tail))
        return r.stdout

    def threads_args(self):
        return ["--threads", str(self.threads)] if self.threads else []

    # ---- 0. the monitor's calibration ----------------------------------------------------------------------
    def calibration(self, benign, cal_accounts):
        """Thresholds from the calibration half of the shipped benign traffic: the one shipped in data/monitor/
        when it was made from this model, traffic and CALIBRATION_VERSION; else made here (about 4 min on 2
        cores), cached by model and traffic in $RETORT_HOME/monitor/."""
        with open(os.path.join(ROOT, "data", "traffic", "benign.jsonl"), "rb") as f:
            traffic_sha256 = hashlib.sha256(f.read()).hexdigest()
        model_sha256 = sha256_file(self.model(self.teacher_spec))
        name = os.path.basename(self.teacher_spec).replace(".gguf", "")
        cache = os.path.join(self.home, "monitor", "calibration-v%d-%s-%s-%s.json" % (
            CALIBRATION_VERSION, name, model_sha256[:12], traffic_sha256[:12]))
        shipped = os.path.join(ROOT, "data", "monitor", "calibration-%s.json.gz" % name)
        made_from = {"model_sha256": model_sha256, "traffic_sha256": traffic_sha256, "version": CALIBRATION_VERSION}
        if os.path.exists(cache) and not self.a.make_calibration:
            say("monitor calibration: cached (%s)" % cache)
            return cache
        if os.path.exists(shipped) and not self.a.make_calibration:
            try:
                with open(shipped[:-len(".json.gz")] + ".made_from.json") as f:
                    shipped_from = {k: v for k, v in json.load(f).items() if k in made_from}
            except (OSError, ValueError):
                shipped_from = None
            if shipped_from == made_from:
                os.makedirs(os.path.dirname(cache), exist_ok=True)
                with gzip.open(shipped, "rb") as f, open(cache + ".tmp", "wb") as out:
                    shutil.copyfileobj(f, out)
                os.replace(cache + ".tmp", cache)
                say("monitor calibration: shipped (%s, made from this model and traffic by `python3 "
                    "scripts/demo.py --make-calibration`)" % os.path.relpath(shipped, ROOT))
                return cache
            say("monitor calibration: %s was made from another model, traffic or version; making one here"
                % os.path.relpath(shipped, ROOT))
        say("monitor calibration: replaying the calibration half of the benign traffic (%d accounts); "
            "once per machine, then cached" % len(cal_accounts))
        work = self.path("calibration")
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        db = os.path.join(work, "calibration.db")
        keys = create_keys(self.retort, work, db, sorted(cal_accounts))
        srv = Server(self.retort, work, db, {"model": self.model(self.teacher_spec), "parallel": 8, "ctx_size": 4096,
                                             "watermark": "none", "monitor": True, "monitor_replay_clock": True,
                                             "max_completion_tokens": 1}, threads=self.threads)
        t = time.time()
        try:
            reqs = [r for r in benign if r["account"] in cal_accounts]
            replay(srv.url, keys, reqs, progress=lambda n, t: say("  %d / %d requests" % (n, t)))
        finally:
            srv.stop()
        self.step_seconds["calibration-replay"] = round(time.time() - t, 1)
        acc = os.path.join(work, "accounts.txt")
        with open(acc, "w") as f:
            f.write("\n".join(sorted(cal_accounts)) + "\n")
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        self.run(["monitor", "calibrate", "--db", db, "--accounts-file", acc, "--out", cache + ".tmp",
                  "--model-name", name], "monitor calibration", log="calibrate")
        os.replace(cache + ".tmp", cache)
        shutil.rmtree(work, ignore_errors=True)
        if self.a.make_calibration:
            os.makedirs(os.path.dirname(shipped), exist_ok=True)
            with open(cache, "rb") as f, gzip.GzipFile(shipped + ".tmp", "wb", compresslevel=9, mtime=0) as out:
                shutil.copyfileobj(f, out)
            os.replace(shipped + ".tmp", shipped)
            meta = shipped[:-len(".json.gz")] + ".made_from.json"
            with open(meta + ".tmp", "w") as f:
                json.dump(dict(made_from, model=name, traffic="data/traffic/benign.jsonl",
                               command="python3 scripts/demo.py --make-calibration",
                               replayed_requests=len([r for r in benign if r["account"] in cal_accounts])), f, indent=1)
                f.write("\n")
            os.replace(meta + ".tmp", meta)
            say("wrote %s and %s" % (shipped, meta))
        return cache

    # ---- 1-3. serve, traffic, harvest, monitor -------------------------------------------------------------
    def serve_and_harvest(self):
        m = self.mode
        benign = read_jsonl(os.path.join(ROOT, "data", "traffic", "benign.jsonl"))
        cal_accounts, eval_accounts = split_accounts(benign)
        calibration = self.calibration(benign, cal_accounts)
        eval_sorted = sorted(eval_accounts)
        n_benign = max(1, round(len(eval_sorted) * m["benign_share"]))
        benign_accounts = eval_sorted[::max(1, len(eval_sorted) // n_benign)][:n_benign]
        per_account = {}
        benign_reqs = []
        for r in sorted((r for r in benign if r["account"] in set(benign_accounts)), key=lambda r: r["t"]):
            per_account[r["account"]] = per_account.get(r["account"], 0) + 1
            if per_account[r["account"]] <= m["benign_cap"]:
                benign_reqs.append(r)
        train = read_jsonl(os.path.join(ROOT, "data", "prompts", "train.jsonl"))
        distiller_prompts = train[0::2][:m["distiller_prompts"]]
        hydra_prompts = train[1::2][:m["hydra_prompts"]]
        hydra = ["hydra-%02d" % i for i in range(m["hydra_accounts"])]
        write_jsonl(self.path("distiller_prompts.jsonl"), distiller_prompts)
        write_jsonl(self.path("hydra_prompts.jsonl"), hydra_prompts)
        done = self.path("harvest", "done.json")
        if os.path.exists(done):
            say("serve + harvest: done before (%s)" % done)
            self.summary.update(json.load(open(done)))
            return

        say("", step="1. the provider: retort serve with watermarks, the crawl monitor and a fresh ledger")
        shutil.rmtree(self.provider, ignore_errors=True)
        shutil.rmtree(self.path("harvest"), ignore_errors=True)
        os.makedirs(self.provider)
        os.makedirs(self.path("harvest"))
        keys = create_keys(self.retort, self.provider, self.db, benign_accounts + ["distiller"] + hydra)
        with open(self.path("accounts.txt"), "w") as f:
            f.write("\n".join(benign_accounts + ["distiller"] + hydra) + "\n")
        with open(self.path("benign_accounts.json"), "w") as f:
            json.dump(benign_accounts, f)  # the replayed users (their answers capped)
        with open(self.path("harvest", "hydra-keys.txt"), "w") as f:
            f.write("# the hydra's API keys, one per account\n" + "\n".join(keys[h] for h in hydra) + "\n")
        config = {"model": self.model(self.teacher_spec), "parallel": 16, "ctx_size": 4096, "watermark": "kgw",
                  "monitor": True, "monitor_calibration": calibration, "monitor_actions": ["flag"],
                  "monitor_replay_clock": True, "monitor_clock_origin_ms": T0_MS, "record_completions": True}
        srv = Server(self.retort, self.provider, self.db, config, threads=self.threads)
        say("serving %s on %s: KGW watermark with a key per account, monitor on (calibrated), every answer "
            "recorded" % (self.teacher_spec, srv.url))
        say("accounts: %d benign users, `distiller`, and %d hydra accounts (%s … %s)" %
            (len(benign_accounts), len(hydra), hydra[0], hydra[-1]))

        say("", step="2. traffic: %d benign requests (%.0f min of recorded use) replayed at %dx while the "
            "distiller harvests at its own pace" % (len(benign_reqs), max(r["t"] for r in benign_reqs) / 60,
                                                    m["speedup"]))
        stop = threading.Event()
        result = {}
        clock_start = srv.health()["monitor_clock"]["start_unix_ms"] / 1000.0

        def benign_thread():
            result["benign_errors"] = replay(srv.url, {a: keys[a] for a in benign_accounts}, benign_reqs,
                                             workers=8, speedup=m["speedup"], clock_start=clock_start,
                                             max_tokens=1, stop=stop)

        bt = threading.Thread(target=benign_thread, daemon=True)
        bt.start()
        t0 = time.time()
        try:
            common = ["--teacher-url", srv.url, "--teacher-tokenizer", self.model(self.teacher_spec),
                      "--signal", "logprobs",
                      "--k", "20", "--max-tokens", str(m["max_tokens"]), "--temperature", "1", "--concurrency",
                      "4", "--seed", "3", "--quiet"]
            say("distiller: retort capture --teacher-url %s --prompts distiller_prompts.jsonl (%d prompts, one "
                "account, top-20 logprobs)" % (srv.url, len(distiller_prompts)))
            self.run(["capture"] + common + ["--prompts", self.path("distiller_prompts.jsonl"), "--out",
                                             self.path("harvest", "distiller"), "--api-key-env", "DEMO_KEY"],
                     "the distiller's harvest", env={"DEMO_KEY": keys["distiller"]}, log="capture-distiller")
            say("distiller: harvested %d answers in %.0f s" % (len(distiller_prompts), time.time() - t0))
            t1 = time.time()
            say("hydra: the same tool spread over %d accounts (--api-keys-file), %d prompts" %
                (len(hydra), len(hydra_prompts)))
            self.run(["capture"] + common + ["--prompts", self.path("hydra_prompts.jsonl"), "--out",
                                             self.path("harvest", "hydra"), "--api-keys-file",
                                             self.path("harvest", "hydra-keys.txt")],
                     "the hydra's harvest", log="capture-hydra")
            say("hydra: harvested %d answers in %.0f s" % (len(hydra_prompts), time.time() - t1))
            bt.join()  # the rest of the benign traffic (its recorded two hours end at 7,172 s / speedup)
        finally:
            stop.set()
            srv.stop()
        say("benign replay: %d requests, refused: %s" % (len(benign_reqs), result.get("benign_errors") or "none"))

        say("", step="3. what the monitor saw")
        report = json.loads(self.run(["monitor", "report", "--db", self.db, "--json", "--html",
                                      self.path("monitor_report.html")], "monitor report",
                                     log="monitor").split("\nwrote ")[0])
        verdicts = report["verdicts"]
        by = {v["subject"]: v for v in verdicts}
        d = by.get("distiller", {})
        monitor = {"distiller": {"wanted": len(distiller_prompts), "sent": d.get("requests"),
                                 "flagged": d.get("flagged", False), "flagged_at_request": d.get("flagged_at_request"),
                                 "reasons": [r["text"] for r in (d.get("flag_reasons") or [])][:4]}}
        # Clusters holding hydra accounts, largest first. As accounts join, the monitor's clusters grow (a
        # cluster's verdict is named after its first member, so a grown one is a new verdict, flagged anew): the
        # hydra was caught when the first of them was flagged; the largest shows whom it linked in the end.
        clusters = sorted([v for v in verdicts if v["cluster"] and any(x in hydra for x in v["members"])],
                          key=lambda v: -sum(x in hydra for x in v["members"]))
        if clusters:
            flagged = [v for v in clusters if v["flagged"]]
            c = min(flagged, key=lambda v: v["flagged_unix_ms"]) if flagged else clusters[0]
            # The cluster may hold the distiller too (one operator, one tool): count the hydra's own requests
            # up to the moment the cluster was flagged (monitor time, from the serve db's monitor_events).
            with sqlite3.connect("file:%s?mode=ro" % self.db, uri=True) as db:
                times = [t for (t,) in db.execute("SELECT unix_ms FROM monitor_events WHERE account IN (%s)" %
                                                  ",".join("?" * len(hydra)), hydra)]
            at = sum(t <= c["flagged_unix_ms"] for t in times) if c["flagged"] else None
            monitor["hydra"] = {"wanted": len(hydra_prompts), "sent": len(times), "flagged": c["flagged"],
                                "flagged_at_request": at, "cluster_requests": c["requests"],
                                "flagged_members": c["members"], "subject": c["subject"],
                                "members": clusters[0]["members"],
                                "reasons": [r["text"] for r in (c.get("flag_reasons") or [])][:4]}
        else:
            monitor["hydra"] = {"wanted": len(hydra_prompts), "flagged": False,
                                "alone": sorted(h for h in hydra if by.get(h, {}).get("flagged"))}
        flagged_members = set()
        for v in verdicts:
            if v["flagged"]:
                flagged_members.update(v["members"] if v["cluster"] else [v["subject"]])
        monitor["benign"] = {"accounts": len(benign_accounts), "requests": len(benign_reqs),
                             "flagged": sorted(a for a in benign_accounts if a in flagged_members)}
        monitor["action"] = ("flag: recorded in the serve db (monitor_actions) and on /metrics; the account keeps "
                             "getting answers, each watermarked with its own key — the evidence the audit reads. "
                             "monitor_actions can also throttle, cap_logprobs, antidistill or block.")
        for who in ["distiller", "hydra"]:
            x = monitor[who]
            if x.get("flagged"):
                say("%s: FLAGGED at its request %d of the %d it wanted%s (%s)" %
                    (who, x["flagged_at_request"], x["wanted"],
                     ", as a cluster of %d accounts" % len(x["flagged_members"]) if "flagged_members" in x else "",
                     "; ".join(x["reasons"][:2])))
            else:
                say("%s: not flagged" % who)
        if clusters:
            say("the monitor linked %d accounts into one cluster: %s (%d of the %d hydra accounts%s)" %
                (len(monitor["hydra"]["members"]), ", ".join(monitor["hydra"]["members"]),
                 sum(x in hydra for x in monitor["hydra"]["members"]), len(hydra),
                 ", and the one-account distiller: the same operator" if "distiller" in monitor["hydra"]["members"]
                 else ""))
        say("benign accounts flagged: %d of %d" % (len(monitor["benign"]["flagged"]), len(benign_accounts)))
        say("action taken: " + monitor["action"])
        out = {"monitor": monitor, "harvest_seconds": round(time.time() - t0, 1)}
        with open(done + ".tmp", "w") as f:
            json.dump(out, f, indent=1)
        os.replace(done + ".tmp", done)
        self.summary.update(out)

    # ---- 4. the students -----------------------------------------------------------------------------------
    def students(self):
        say("", step="4. distillation: students from the harvest, and a clean control")
        teacher = self.model(self.teacher_spec)
        clean = self.path("clean_store")
        if not os.path.exists(os.path.join(clean, "manifest.json")) or not self._complete(clean):
            say("control data: the teacher's own unwatermarked answers to the distiller's prompts (local capture)")
            self.run(["capture", "--teacher", teacher, "--prompts", self.path("distiller_prompts.jsonl"), "--out",
                      clean, "--max-tokens", str(self.mode["max_tokens"]), "--k", "20", "--seed", "5", "--quiet"]
                     + self.threads_args(), "the control capture", log="capture-clean")
        todo = [("student", self.path("harvest", "distiller"), self.mode["distiller_prompts"]),
                ("control", clean, self.mode["distiller_prompts"])]
        if self.mode["hydra_student"]:
            todo.append(("hydra-student", self.path("harvest", "hydra"), self.mode["hydra_prompts"]))
        for name, store, n in todo:
            final = self.path("students", name, "final")
            if os.path.exists(os.path.join(final, "config.json")):
                say("%s: trained before" % name)
                continue
            steps = math.ceil(self.mode["epochs"] * n / 8)  # batch 8
            say("%s: SFT on %s (%d answers, %d epochs, %d steps): a %d-layer student cut from the public %s" %
                (name, os.path.relpath(store, self.out), n, self.mode["epochs"], steps, self.a.student_layers,
                 self.teacher_spec))
            shutil.rmtree(self.path("students", name), ignore_errors=True)
            t = time.time()
            self.run(["distill", "--teacher", teacher, "--data", store, "--student",
                      "layers=%d,init=prune,keep=influence" % self.a.student_layers, "--loss", "ce",
                      "--steps", str(steps), "--batch", "8",
                      "--max-seq", "128", "--lr", "3e-4", "--warmup", "5", "--min-lr-ratio", "0.1",
                      "--weight-decay", "0.01", "--clip", "1", "--seed", "0", "--eval-every", "0", "--quiet",
                      "--out", self.path("students", name)] + self.threads_args(), "training " + name,
                     log="distill-" + name)
            say("%s: trained in %.0f s" % (name, time.time() - t))

    def _complete(self, store):
        try:
            return json.load(open(os.path.join(store, "manifest.json"))).get("complete", False)
        except (OSError, ValueError):
            return False

    # ---- 5-6. the audit and the case file ------------------------------------------------------------------
    def audit(self):
        say("", step="5. the investigation: radioactivity, attribution, provenance")
        os.makedirs(self.path("audit"), exist_ok=True)
        served = self.path("audit", "served.jsonl")
        if not os.path.exists(served):
            # Everything the provider served, with the account each answer went to (record_completions) ...
            self.run(["keys", "served", "--db", self.db, "--out", served + ".all"], "exporting the served texts",
                     env={"RETORT_HOME": self.provider}, log="served")
            # ... less the replayed benign answers: the replay capped them at one token (X-Retort-Replay-Max-Tokens),
            # so they hold nothing to score; in service they would be whole answers like any other.
            with open(self.path("benign_accounts.json")) as f:
                benign = set(json.load(f))
            write_jsonl(served, [r for r in read_jsonl(served + ".all") if r["account"] not in benign])
            os.remove(served + ".all")
        key = os.path.join(self.provider, "serve-watermark.key")
        common = ["--key-file", key, "--accounts", self.path("accounts.txt"), "-m", self.model(self.teacher_spec),
                  "--min-tokens", "100"] + self.threads_args()
        closed = ["--mode", "closed", "--prompts", os.path.join(ROOT, "data", "prompts", "heldout.jsonl"),
                  "--samples", str(self.mode["closed_samples"]), "--max-tokens", "64", "--temperature", "1",
                  "--seed", "7", "--seen", served]
        suspects = {"student": self.path("students", "student", "final"),
                    "control": self.path("students", "control", "final"),
                    "unrelated": self.model(self.control_spec)}
        if self.mode["hydra_student"]:
            suspects["hydra-student"] = self.path("students", "hydra-student", "final")
        results = {}
        for name, model in suspects.items():
            # The unrelated model is the null calibration: 120 texts give it over a thousand units, at its cost.
            reading = ["--texts", served] + (["--max-texts", "120"] if name == "unrelated" else [])
            for test, extra in [("open", reading), ("closed", closed)]:
                if name in ("unrelated", "hydra-student") and test == "closed":
                    continue  # the hydra's student is there for attribution, which the open test gives
                out = self.path("audit", "%s-%s.json" % (name, test))
                if not os.path.exists(out):
                    say("radioactivity, %s test: %s" % (test, name))
                    self.run(["audit", "radioactivity", "--suspect", model, "--out", out, "--json"] + common + extra,
                             "the %s test of %s" % (test, name), log="audit-%s-%s" % (name, test))
                results[(name, test)] = json.load(open(out))
        prov = self.path("audit", "provenance.json")
        if not os.path.exists(prov):
            say("provenance: is the student derived from %s? (control: %s)" % (self.teacher_spec, self.control_spec))
            self.run(["audit", "provenance", "--suspect", suspects["student"], "--candidate",
                      self.spec(self.teacher_spec), "--controls", self.spec(self.control_spec),
                      "--budget", str(self.mode["provenance_budget"]),
                      "--out", prov, "--json"] + self.threads_args(), "the provenance test", log="provenance")

        say("", step="6. the case file")
        case = self.path("case")
        controls = [self.path("audit", "control-open.json"), self.path("audit", "control-closed.json"),
                    self.path("audit", "unrelated-open.json")]
        self.run(["audit", "report", "--suspect-result", self.path("audit", "student-open.json"),
                  self.path("audit", "student-closed.json"), "--control-result"] + controls +
                 ["--provenance", prov, "--title", "Case: a student distilled through our API",
                  "--suspect-name", "the distiller's student", "--out", case], "the case file", log="report")
        self.summary["audit"] = self.summarize(results, json.load(open(prov)))
        self.summary["case"] = json.load(open(os.path.join(case, "case.json"))).get("verdict")
        self.summary["case_file"] = os.path.join(case, "case.html")

    def summarize(self, results, prov):
        """The numbers a reader checks: p per test (master key), the accounts attributed (Holm p < 1e-3)."""
        out = {}
        for (name, test), r in results.items():
            t = r.get("test") or {}
            attributed = [{"account": x["account"], "p_holm": x["p_holm"]} for x in (r.get("accounts") or [])
                          if x.get("p_holm") is not None and x["p_holm"] < 1e-3]
            best = min([x["p_holm"] for x in attributed] + ([t["p_value"]] if t.get("p_value") is not None else []),
                       default=None)
            out["%s/%s" % (name, test)] = {"scored": (r.get("counts") or {}).get("scored"),
                                            "enough_evidence": r.get("enough_evidence"),
                                            "p_master_key": t.get("p_value"), "strongest_p": best,
                                            "attributed": attributed}
        c = (prov.get("candidates") or [{}])[0]
        out["provenance"] = {"candidate": c.get("name"), "p_holm": c.get("p_holm"), "derived": c.get("derived"),
                             "prompts": c.get("prompts"), "verdict": prov.get("verdict")}
        return out

    def main(self):
        if self.a.make_calibration:
            benign = read_jsonl(os.path.join(ROOT, "data", "traffic", "benign.jsonl"))
            os.makedirs(self.out, exist_ok=True)
            self.calibration(benign, split_accounts(benign)[0])
            return
        if self.a.fresh:
            shutil.rmtree(self.out, ignore_errors=True)
        os.makedirs(self.out, exist_ok=True)
        # A resumed run keeps the timings of the steps an earlier run did (this run skips them).
        earlier = {}
        try:
            with open(self.path("demo.json")) as f:
                earlier = json.load(f)
        except (OSError, ValueError):
            pass
        say("retort demo (%s) in %s" % (self.summary["mode"], self.out))
        self.serve_and_harvest()
        self.students()
        self.audit()
        self.summary["seconds"] = round(time.time() - T_START, 1)
        steps = dict(earlier.get("step_seconds") or {}) if isinstance(earlier, dict) else {}
        steps.update(self.step_seconds)
        self.summary["step_seconds"] = steps
        if steps != self.step_seconds:  # resumed: what this run took, and what all runs took together
            self.summary["resumed"] = True
            self.summary["seconds_all_runs"] = round(self.summary["seconds"] + float(earlier.get("seconds_all_runs") or earlier.get("seconds") or 0), 1)
        with open(self.path("demo.json.tmp"), "w") as f:
            json.dump(self.summary, f, indent=1)
        os.replace(self.path("demo.json.tmp"), self.path("demo.json"))
        say("", step="verdict")
        print(json.dumps(self.summary["audit"], indent=1))
        say("case file: %s" % self.summary["case_file"])
        say("summary: %s (%.0f s in all)" % (self.path("demo.json"), self.summary["seconds"]))


def main():
    ap = argparse.ArgumentParser(prog="retort demo", description=__doc__.split("\n")[0])
    ap.add_argument("--retort", default=os.path.join(ROOT, "build", "retort"), help="the retort binary")
    ap.add_argument("--out", help="work directory (default $RETORT_HOME/runs/demo[-fast])")
    ap.add_argument("--fast", action="store_true", help="a smaller harvest and students (about 10 minutes)")
    ap.add_argument("--fresh", action="store_true", help="start over instead of resuming what --out holds")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads per model (0 = all cores)")
    ap.add_argument("--teacher", default=TEACHER, help="the served model (a .gguf or a model cache name)")
    ap.add_argument("--control-model", default=CONTROL_MODEL, help="an unrelated model: the audit's control")
    ap.add_argument("--student-layers", type=int, default=20, help="layers kept in the students cut from the teacher")
    ap.add_argument("--mini", action="store_true", help=argparse.SUPPRESS)  # tests: the chain in miniature
    ap.add_argument("--make-calibration", action="store_true",
                    help="make the monitor calibration here and write it to data/monitor/ (to ship), then stop")
    Demo(ap.parse_args()).main()


if __name__ == "__main__":
    main()
