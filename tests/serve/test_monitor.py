#!/usr/bin/env python3
"""The crawl monitor inside a real `retort serve`, driven by the official openai client (docs/monitor.md).

Run by CTest as:  python3 tests/serve/test_monitor.py --retort build/retort
Needs the default model in the model cache (scripts/setup.sh); skips with a message when it is absent.

1. An uncalibrated server records benign users' requests (embeddings from the prefill included) and scores
   nothing; GET /v1/monitor needs an admin key.
2. `retort monitor calibrate` sets thresholds from those accounts only.
3. A server with that calibration and actions flag+block: a crawler (the shipped prompts, top_logprobs 20,
   one fixed parameter set) is flagged within its first requests and then refused with 403 naming the
   monitor; the decision is in monitor_actions with its reasons, the refused requests' ledger rows say
   why, /metrics counts it, `retort monitor report` (table, JSON, HTML) shows it, `retort monitor rescore`
   finds the same in the recorded traffic; benign users go on.
4. Replay mode for a live client beside a replayer: a request without X-Retort-Replay-Time-Ms is stamped on
   the scaled clock (monitor_clock_origin_ms + (now - start) x monitor_clock_speedup), and
   X-Retort-Replay-Max-Tokens caps a request's completion (chat, completions, streamed) while the monitor records
   the request's own max_tokens; a request without it is not capped; a malformed one is a 400 naming it.
5. Bad input: calibrate without accounts, a corrupt calibration, an unknown action, an invalid scaled clock.
"""
import argparse
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

import openai

RETORT = None
MODEL = "smollm2-135m-instruct"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
T0_MS = 1_800_000_000_000


def read(path):
    with open(path) as f:
        return f.read()


def model_path():
    home = os.environ.get("RETORT_HOME") or os.path.expanduser("~/.cache/retort")
    return os.path.join(home, "models", MODEL + ".gguf")


class Server:
    def __init__(self, home, config):
        path = os.path.join(home, "serve-%d.json" % time.time_ns())
        with open(path, "w") as f:
            json.dump(dict(dict(model=model_path(), parallel=4, ctx_size=1024, watermark="none",
                                monitor_replay_clock=True, max_completion_tokens=1), **config), f)
        self.log_path = os.path.join(home, "serve-%d.log" % time.time_ns())
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([RETORT, "serve", "--config", path, "--port", "0",
                                      "--db", os.path.join(home, "serve.db")],
                                     env=dict(os.environ, RETORT_HOME=home, OMP_WAIT_POLICY="passive"),
                                     stdout=subprocess.DEVNULL, stderr=self._log)
        self.port = None
        deadline = time.time() + 120
        while time.time() < deadline and self.port is None:
            if self.proc.poll() is not None:
                break
            m = re.search(r"on http://127\.0\.0\.1:(\d+)", read(self.log_path))
            if m:
                self.port = int(m.group(1))
            else:
                time.sleep(0.05)
        self.base = "http://127.0.0.1:%s" % self.port

    def log(self):
        return read(self.log_path)

    def client(self, key):
        return openai.OpenAI(base_url=self.base + "/v1", api_key=key, max_retries=0, timeout=120)

    def get(self, path, key=None):
        req = urllib.request.Request(self.base + path, headers={"Authorization": "Bearer " + key} if key else {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.assert_rc = self.proc.wait(timeout=120)


def ask(client, text, t, **params):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}],
                                          extra_headers={"X-Retort-Replay-Time-Ms": str(T0_MS + int(t * 1000))},
                                          **params)


class Monitor(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(model_path()):
            raise unittest.SkipTest("default model not found at %s (run scripts/setup.sh)" % model_path())
        cls.tmp = tempfile.TemporaryDirectory(prefix="retort_test_monitor_")
        cls.home = cls.tmp.name
        cls.db = os.path.join(cls.home, "serve.db")
        # Benign users: the first 20 opening messages of six chat/coding/short accounts of data/traffic,
        # with their own parameters and times (none asks for logprobs).
        by_account = {}
        with open(os.path.join(ROOT, "data", "traffic", "benign.jsonl")) as f:
            for line in f:
                r = json.loads(line)
                if r["kind"] in ("chat", "coding", "short") and r["turn"] == 0 and "logprobs" not in r["params"]:
                    by_account.setdefault(r["account"], []).append(r)
        cls.benign = {a: rs[:20] for a, rs in sorted(by_account.items()) if len(rs) >= 20}
        cls.benign = dict(list(cls.benign.items())[:6])
        assert len(cls.benign) == 6, cls.benign.keys()
        cls.keys = {a: cls.key(a) for a in list(cls.benign) + ["crawler"]}
        cls.admin = cls.key("ops", "--admin")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    @classmethod
    def key(cls, account, *extra):
        out = subprocess.run([RETORT, "keys", "create", "--account", account, "--db", cls.db, *extra],
                             capture_output=True, text=True, check=True, env=dict(os.environ, RETORT_HOME=cls.home))
        return out.stdout.strip()

    def test_monitor_end_to_end(self):
        # 1. Uncalibrated: features recorded, nothing scored.
        srv = Server(self.home, {"monitor": True})
        self.assertIsNotNone(srv.port, srv.log())
        self.assertIn("uncalibrated", srv.log())
        for account, reqs in self.benign.items():
            c = srv.client(self.keys[account])
            for r in reqs:
                ask(c, r["user"], r["t"], **{k: v for k, v in r["params"].items() if k in ("max_tokens", "temperature")})
        status, _ = srv.get("/v1/monitor", self.keys["crawler"])
        self.assertEqual(status, 403)
        time.sleep(2.5)  # the verdicts table is written every 2 s
        status, body = srv.get("/v1/monitor", self.admin)
        self.assertEqual(status, 200, body)
        mon = json.loads(body)
        self.assertFalse(mon["calibrated"])
        subjects = {v["subject"]: v for v in mon["verdicts"]}
        for a in self.benign:
            self.assertEqual(subjects[a]["requests"], 20)
            self.assertEqual(subjects[a]["score"], 0)
            self.assertIn("spread", subjects[a]["statistics"])  # embeddings arrived
        srv.stop()
        self.assertEqual(srv.assert_rc, 0, srv.log())
        with sqlite3.connect(self.db) as db:
            n, widths = db.execute("SELECT count(*), group_concat(DISTINCT length(embedding)) FROM monitor_events").fetchone()
        self.assertEqual(n, 120)
        self.assertEqual(widths, str(576 * 4))  # SmolLM2's n_embd, float32

        # 2. Calibration from the benign accounts only.
        cal = os.path.join(self.home, "calibration.json")
        out = subprocess.run([RETORT, "monitor", "calibrate", "--db", self.db, "--accounts", ",".join(self.benign),
                              "--min-requests", "8", "--window", "32", "--out", cal], capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("calibrated on 6 benign accounts, 120 requests", out.stdout)
        thresholds = json.loads(read(cal))["threshold"]
        for t in ("mmd", "prada", "logprobs", "fingerprint", "rate"):
            self.assertIn(t, thresholds)

        # 3. Calibrated, flag + block: the crawler is stopped, the benign users are not.
        srv = Server(self.home, {"monitor": True, "monitor_calibration": cal, "monitor_actions": ["flag", "block"]})
        self.assertIsNotNone(srv.port, srv.log())
        prompts = [json.loads(l)["prompt"] for l in read(os.path.join(ROOT, "data", "prompts", "train.jsonl")).splitlines()]
        c = srv.client(self.keys["crawler"])
        served, blocked = 0, None
        for i, p in enumerate(prompts[:60]):
            try:
                ask(c, p, 100 + 2 * i, max_tokens=256, logprobs=True, top_logprobs=20, seed=i)
                served += 1
            except openai.PermissionDeniedError as e:
                blocked = e
                break
            time.sleep(0.05)  # the monitor's worker observes asynchronously
        self.assertIsNotNone(blocked, "the crawler was never blocked: " + srv.log())
        self.assertIn("crawl monitor", str(blocked))
        self.assertLessEqual(served, 30)
        self.assertGreaterEqual(served, 8)  # no test speaks before min_requests
        b = next(iter(self.benign))
        ask(srv.client(self.keys[b]), "What should I cook tonight with leftover rice?", 9000)  # still served
        status, metrics = srv.get("/metrics")
        self.assertRegex(metrics, r'retort_monitor_flagged_total\{kind="account"\} [1-9]')
        self.assertRegex(metrics, r'retort_monitor_enforced_total\{action="block"\} 1')
        srv.stop()
        self.assertIn("monitor flagged crawler", srv.log())
        with sqlite3.connect(self.db) as db:
            rows = db.execute("SELECT subject, actions, reasons FROM monitor_actions").fetchall()
            pol = db.execute("SELECT http_status, policy FROM ledger WHERE account = 'crawler' AND http_status = 403 "
                             "AND endpoint = '/v1/chat/completions'").fetchall()
        self.assertEqual([r[0] for r in rows], ["crawler"])
        self.assertEqual(json.loads(rows[0][1]), ["flag", "block"])
        reasons = json.loads(rows[0][2])
        self.assertTrue(reasons and all(r["text"] for r in reasons), reasons)
        self.assertEqual(len(pol), 1)
        self.assertEqual(json.loads(pol[0][1])["monitor"]["subject"], "crawler")

        # The report: table, JSON, HTML.
        html = os.path.join(self.home, "report.html")
        out = subprocess.run([RETORT, "monitor", "report", "--db", self.db, "--html", html], capture_output=True,
                             text=True)
        self.assertEqual(out.returncode, 0, out.stderr)
        first = [l for l in out.stdout.splitlines() if l.startswith("crawler")]
        self.assertTrue(first and " yes " in first[0], out.stdout)
        self.assertIn("1 decisions recorded", out.stdout)
        self.assertIn("crawler", read(html))
        rep = json.loads(subprocess.run([RETORT, "monitor", "report", "--db", self.db, "--json"], capture_output=True,
                                        text=True, check=True).stdout)
        crawler = next(v for v in rep["verdicts"] if v["subject"] == "crawler")
        self.assertTrue(crawler["flagged"])
        self.assertTrue(crawler["flag_reasons"])
        for a in self.benign:
            self.assertFalse(next(v for v in rep["verdicts"] if v["subject"] == a)["flagged"], a)

        # Rescoring the recorded traffic with the same calibration finds the same: the crawler flagged after
        # as many requests as the server saw, the benign users not.
        out = subprocess.run([RETORT, "monitor", "rescore", "--db", self.db, "--calibration", cal, "--json"],
                             capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stderr)
        res = json.loads(out.stdout)
        again = next(v for v in res["verdicts"] if v["subject"] == "crawler")
        self.assertTrue(again["flagged"])
        self.assertEqual(again["flagged_at_request"], crawler["flagged_at_request"])
        for a in self.benign:
            self.assertFalse(next(v for v in res["verdicts"] if v["subject"] == a)["flagged"], a)
        out = subprocess.run([RETORT, "monitor", "rescore", "--db", self.db, "--calibration", os.path.join(self.home, "nope.json")],
                             capture_output=True, text=True)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("nope.json", out.stderr)

    def test_scaled_clock_and_replay_cap(self):
        home = os.path.join(self.home, "clock")  # a database of its own: the other tests count events
        os.makedirs(home)
        key = subprocess.run([RETORT, "keys", "create", "--account", "live", "--db", os.path.join(home, "serve.db")],
                             capture_output=True, text=True, check=True, env=dict(os.environ, RETORT_HOME=home)).stdout.strip()
        origin, speedup = T0_MS + 50_000_000, 60
        srv = Server(home, {"monitor_clock_origin_ms": origin, "monitor_clock_speedup": speedup,
                            "max_completion_tokens": 0})
        self.assertIsNotNone(srv.port, srv.log())
        status, body = srv.get("/health")
        clock = json.loads(body)["monitor_clock"]
        self.assertEqual((clock["origin_ms"], clock["speedup"]), (origin, speedup))
        start = clock["start_unix_ms"]
        self.assertIn("monitor clock (replay evaluation): %d + (now - %d) x 60" % (origin, start), srv.log())
        c = srv.client(key)
        msgs = [{"role": "user", "content": "Tell me about rivers."}]
        free = {"ignore_eos": True}  # every token up to the limit is generated

        def cap(n, t=None):
            h = {"X-Retort-Replay-Max-Tokens": str(n)}
            if t is not None:
                h["X-Retort-Replay-Time-Ms"] = str(t)
            return h

        # Replayed: its own time, its generation capped (the monitor sees max_tokens 40).
        replayed = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=40, extra_body=free,
                                             extra_headers=cap(3, origin + 5000))
        self.assertEqual(replayed.usage.completion_tokens, 3)
        self.assertEqual(replayed.choices[0].finish_reason, "length")
        # Live (no headers): on the scaled clock, not capped.
        live = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, extra_body=free)
        self.assertEqual(live.usage.completion_tokens, 8)
        # The cap without the time header, on completions, and streamed.
        capped = c.completions.create(model=MODEL, prompt="Rivers of Europe:", max_tokens=20, extra_body=free,
                                      extra_headers=cap(4))
        self.assertEqual(capped.usage.completion_tokens, 4)
        stream = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=30, extra_body=free, stream=True,
                                           stream_options={"include_usage": True}, extra_headers=cap(2, origin + 9000))
        chunks = list(stream)
        self.assertEqual(chunks[-1].usage.completion_tokens, 2)
        for bad in ("0", "-1", "3.5", "x", "99999999999999999999"):
            with self.assertRaises(openai.BadRequestError, msg=bad) as e:
                c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, extra_headers=cap(bad))
            self.assertEqual(e.exception.body["param"], "X-Retort-Replay-Max-Tokens")
            self.assertIn("positive integer", e.exception.body["message"])
        srv.stop()
        self.assertEqual(srv.assert_rc, 0, srv.log())

        with sqlite3.connect(os.path.join(home, "serve.db")) as db:
            events = {rid: (ms, json.loads(ev)) for rid, ms, ev in db.execute("SELECT request_id, unix_ms, event FROM monitor_events")}
            started = dict(db.execute("SELECT request_id, started_unix_ms FROM ledger"))
        self.assertEqual(len(events), 4, events)
        self.assertEqual(events[replayed.id][0], origin + 5000)
        self.assertEqual(events[replayed.id][1]["max_tokens"], 40)  # the request's own, not the cap
        for r in (live, capped):  # stamped from the request's arrival, as the ledger has it
            self.assertEqual(events[r.id][0], origin + (started[r.id] - start) * speedup, r.id)
            self.assertGreater(events[r.id][0], origin)
        self.assertEqual(events[capped.id][1]["max_tokens"], 20)
        self.assertEqual(events[chunks[0].id][0], origin + 9000)
        self.assertEqual(events[chunks[0].id][1]["max_tokens"], 30)

    def test_bad_input(self):
        out = subprocess.run([RETORT, "monitor", "calibrate", "--db", self.db, "--out", "x.json"], capture_output=True,
                             text=True)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("name the benign accounts", out.stderr)
        out = subprocess.run([RETORT, "monitor", "report", "--db", os.path.join(self.home, "none.db")],
                             capture_output=True, text=True)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("does not exist", out.stderr)
        bad = os.path.join(self.home, "bad-calibration.json")
        with open(bad, "w") as f:
            f.write("{not json")
        srv = Server(self.home, {"monitor_calibration": bad})
        self.assertIsNone(srv.port)
        self.assertNotEqual(srv.proc.wait(timeout=60), 0)
        self.assertIn("bad-calibration.json is not valid JSON", srv.log())
        srv = Server(self.home, {"monitor_actions": ["flag", "tarpit"]})
        self.assertIsNone(srv.port)
        self.assertIn('unknown action "tarpit"', srv.log())
        srv = Server(self.home, {"monitor_actions": ["antidistill"]})
        self.assertIsNone(srv.port)
        self.assertIn("retort antidistill prepare", srv.log())
        # The scaled clock is for replay evaluations only, and must run forward.
        for config, message in (({"monitor_replay_clock": False, "monitor_clock_origin_ms": T0_MS},
                                 "monitor_clock_origin_ms needs monitor_replay_clock: true"),
                                ({"monitor_clock_origin_ms": T0_MS, "monitor_clock_speedup": 0},
                                 "monitor_clock_speedup must be > 0"),
                                ({"monitor_clock_origin_ms": -5}, "monitor_clock_origin_ms must be >= 0"),
                                ({"monitor_clock_speedup": 10}, "monitor_clock_speedup needs monitor_clock_origin_ms")):
            srv = Server(self.home, config)
            self.assertIsNone(srv.port, config)
            self.assertIn(message, srv.log())


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--retort", required=True)
    a, rest = ap.parse_known_args()
    RETORT = os.path.abspath(a.retort)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
