#!/usr/bin/env python3
"""`retort capture --teacher-url`: capture from an OpenAI-compatible API, end to end.

Run by CTest (CMakeLists.txt) as:  python3 tests/distill/test_remote_capture.py --retort build/retort

- Through a real `retort serve` (the default model; skipped with a message when the model cache lacks it): the
  store equals a local (white-box) capture of the same prompts and seeds — same tokens, logprobs within 1e-4 —
  except where the API cannot tell: the stop token's distribution (stored as a hard label, see
  src/retort/distill/remote_capture.h). Chat prompts (/chat/completions) and raw ones (/completions).
- Against a small fake server in this file (no model needed): 429 with Retry-After, 500s and answers slower than
  the client's timeout in a scripted pattern end with every sample stored once; a capture killed with SIGKILL
  mid-way and resumed gives the same store as an uninterrupted run and never asks a finished sample again;
  Ctrl-C stops cleanly (exit 130) and resumes; a 400 on one prompt is a recorded, counted skip; 401, a server
  without logprobs and a non-OpenAI endpoint get clear errors.
- Optional, through llama.cpp's llama-server (a non-retort server; skipped unless LLAMA_SERVER names its binary):
  chat and raw prompts into a signal store (--teacher-tokenizer) and a text store; both complete, ids decode to
  the completions, the same seed gives the same tokens, provenance names what the server reported.
    LLAMA_SERVER=/path/to/llama-server python3 tests/distill/test_remote_capture.py --retort build/retort \\
        ThroughLlamaServer
"""
import argparse
import array
import glob
import http.server
import json
import math
import os
import re
import signal
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

RETORT = None
MODEL = "smollm2-135m-instruct"


def model_cache():
    return os.path.join(os.environ.get("RETORT_HOME") or os.path.expanduser("~/.cache/retort"), "models")


def read_text(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        arr = array.array({"I32": "i", "I64": "q", "F32": "f"}[t["dtype"]])
        arr.frombytes(data[a:b])
        out[name] = arr
    return out, header.get("__metadata__", {})


def read_signal_store(d):
    """{sample_id: (tokens, prompt_len, token_logprob, [topk ids per position], [topk logprobs], tail)}, manifest,
    provenance rows."""
    with open(os.path.join(d, "manifest.json")) as f:
        man = json.load(f)
    k = man["k"]
    samples, prov = {}, []
    for sh in man["shards"]:
        t, meta = read_safetensors(os.path.join(d, sh["file"]))
        prov += json.loads(meta.get("provenance", "[]"))
        c = 0
        for s, sid in enumerate(t["sample_ids"]):
            toks = list(t["tokens"][t["sample_offsets"][s]:t["sample_offsets"][s + 1]])
            pl = t["prompt_lengths"][s]
            n = len(toks) - pl
            samples[sid] = (toks, pl, list(t["token_logprob"][c:c + n]),
                            [list(t["topk_ids"][(c + j) * k:(c + j + 1) * k]) for j in range(n)],
                            [list(t["topk_logprobs"][(c + j) * k:(c + j + 1) * k]) for j in range(n)],
                            list(t["tail_mass"][c:c + n]))
            c += n
    return samples, man, prov


def read_text_store(d):
    with open(os.path.join(d, "manifest.json")) as f:
        man = json.load(f)
    recs = {}
    for sh in man["shards"]:
        with open(os.path.join(d, sh["file"]), encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                assert r["sample_id"] not in recs, f"sample {r['sample_id']} stored twice"
                recs[r["sample_id"]] = r
    return recs, man


def stable(r):
    """A record without what differs between runs (time, the server's response id)."""
    r = dict(r)
    for f in ("time", "server", "endpoint"):
        r.pop(f, None)
    return r


def run(args, env=None, timeout=600):
    return subprocess.run([RETORT, *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_WAIT_POLICY="passive", **(env or {})))


# ---- a fake OpenAI-compatible server ---------------------------------------------------------------------

class FakeApi:
    """Answers /v1/chat/completions deterministically from (last message, seed, max_tokens): the completion is
    spelled one ASCII character per token with made-up logprobs. `script(n)` (n = request number from 1) may
    return "429", "500", "slow" or "400" to fail that request; the server logs every successful answer."""

    def __init__(self, script=None, logprobs=True, delay=0.0, key=None):
        self.script = script or (lambda n, body: None)
        self.logprobs, self.delay, self.key = logprobs, delay, key
        self.lock = threading.Lock()
        self.n = 0
        self.answered = []  # seeds of successful answers, in order
        self.auth = []      # (last message, Authorization header) of successful answers
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def send(self, status, obj, headers=()):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for h, v in headers:
                    self.send_header(h, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if fake.key and self.headers.get("Authorization") != "Bearer " + fake.key:
                    return self.send(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                                     "param": None, "code": "invalid_api_key"}})
                with fake.lock:
                    fake.n += 1
                    n = fake.n
                what = fake.script(n, body)
                if what == "429":
                    return self.send(429, {"error": {"message": "slow down", "type": "rate_limit_error", "param": None,
                                                     "code": "rate_limit_exceeded"}}, [("Retry-After", "0.05")])
                if what == "500":
                    return self.send(500, {"error": {"message": "boom", "type": "server_error", "param": None,
                                                     "code": None}})
                if what == "400":
                    return self.send(400, {"error": {"message": "This prompt is refused by policy",
                                                     "type": "invalid_request_error", "param": "messages", "code": None}})
                if what == "slow":
                    time.sleep(1.0)
                if fake.delay:
                    time.sleep(fake.delay)
                self.send(200, fake.answer(body))
                with fake.lock:
                    fake.answered.append(body.get("seed"))
                    fake.auth.append((body["messages"][-1]["content"], self.headers.get("Authorization")))

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # the client gave up on a slow answer (a scripted timeout): a broken pipe here is expected

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, body):
        text = body["messages"][-1]["content"]
        seed = body.get("seed", 0)
        full = f"Re {text[:12]} #{seed % 9973}."
        max_tokens = body.get("max_tokens", 16)
        out = full[:max_tokens]
        choice = {"index": 0, "message": {"role": "assistant", "content": out},
                  "finish_reason": "stop" if len(out) == len(full) else "length", "logprobs": None}
        if self.logprobs and body.get("logprobs"):
            k = body.get("top_logprobs", 0)
            content = []
            for i, ch in enumerate(out):
                lp = -0.05 * (1 + (i + seed) % 7)
                alts = [ch] + [c for c in "etaoinshrdlu" if c != ch][:max(0, k - 1)]
                top = [{"token": a, "logprob": lp if q == 0 else lp - 1.5 - q, "bytes": list(a.encode())}
                       for q, a in enumerate(alts[:k])]
                content.append({"token": ch, "logprob": lp, "bytes": list(ch.encode()), "top_logprobs": top})
            choice["logprobs"] = {"content": content}
        return {"id": f"chatcmpl-{seed}", "object": "chat.completion", "created": 1700000000,
                "model": "fake-teacher", "system_fingerprint": "fp_fake",
                "choices": [choice], "usage": {"prompt_tokens": 10, "completion_tokens": len(out),
                                               "total_tokens": 10 + len(out)}}

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def write_prompts(path, n):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"Question number {i}: why?"}) + "\n")


class FakeServerCapture(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        self.prompts = os.path.join(self.dir, "prompts.jsonl")
        write_prompts(self.prompts, 12)

    def tearDown(self):
        self.tmp.cleanup()

    def capture(self, url, out, *extra, **kw):
        return run(["capture", "--teacher-url", url, "--teacher-model", "fake-teacher", "--prompts", self.prompts,
                    "--out", out, "--samples", "2", "--max-tokens", "20", "--k", "5", "--seed", "11",
                    "--shard-samples", "4", "--quiet", *extra], **kw)

    def test_failures_in_a_scripted_pattern_end_with_every_sample_once(self):
        pattern = {1: "429", 3: "500", 5: "slow"}
        api = FakeApi(script=lambda n, body: pattern.get(n % 7))
        out = os.path.join(self.dir, "store")
        try:
            r = self.capture(api.url, out, "--concurrency", "3", "--timeout", "0.5", "--backoff", "0.05")
        finally:
            api.close()
        self.assertEqual(r.returncode, 0, r.stderr)
        recs, man = read_text_store(out)
        self.assertEqual(sorted(recs), list(range(24)))
        self.assertTrue(man["complete"])
        usage = man["source"]["usage"]
        self.assertGreater(usage["throttled"], 0, usage)
        self.assertGreater(usage["server_errors"], 0, usage)
        self.assertGreater(usage["transport_errors"], 0, usage)  # the slow answers
        # Every attempt is counted: each sample's answered one plus the retries. (The server may see fewer: an
        # attempt that timed out before it was read can still sit in its backlog when the capture ends.)
        self.assertEqual(usage["requests"], 24 + usage["retries"], usage)
        self.assertLessEqual(api.n, usage["requests"], usage)
        self.assertRegex(r.stderr, r"\d+ throttled")
        # Each record is the answer to its own sample's seed, with its provenance.
        for sid, rec in recs.items():
            self.assertEqual(rec["server"]["model"], "fake-teacher")
            self.assertEqual(rec["server"]["system_fingerprint"], "fp_fake")
            self.assertEqual(rec["prompt_index"] * 2 + rec["sample_index"], sid)
            self.assertEqual("".join(bytes.fromhex(t["bytes"]).decode() for t in rec["tokens"]), rec["completion"])
            self.assertEqual(len(rec["tokens"][0]["top"]), 5)
        # Asked again: nothing left to ask.
        api = FakeApi()
        try:
            again = self.capture(api.url, out)
        finally:
            api.close()
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertEqual(api.n, 0)

    def test_kill_and_resume_equals_a_straight_run(self):
        straight = os.path.join(self.dir, "straight")
        api = FakeApi()
        try:
            self.assertEqual(self.capture(api.url, straight).returncode, 0)
        finally:
            api.close()
        want, _ = read_text_store(straight)

        out = os.path.join(self.dir, "killed")
        api = FakeApi(delay=0.15)
        try:
            p = subprocess.Popen([RETORT, "capture", "--teacher-url", api.url, "--teacher-model", "fake-teacher",
                                  "--prompts", self.prompts, "--out", out, "--samples", "2", "--max-tokens", "20",
                                  "--k", "5", "--seed", "11", "--shard-samples", "4", "--concurrency", "2", "--quiet"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 60
            journal = os.path.join(out, "journal.jsonl")
            # Kill once a shard is written and more answers wait in the journal.
            while time.time() < deadline:
                m = os.path.join(out, "manifest.json")
                if os.path.exists(m) and os.path.exists(journal) and os.path.getsize(journal) > 0:
                    try:
                        with open(m) as f:
                            if json.load(f)["shards"]:
                                break
                    except json.JSONDecodeError:
                        pass
                time.sleep(0.01)
            p.kill()
            p.wait()
        finally:
            api.close()
        done_before = set(read_text_store(out)[0])
        with open(journal) as f:
            done_before |= {json.loads(l)["sample_id"] for l in f if l.endswith("\n")}
        self.assertTrue(done_before, "the kill came before anything was answered")
        self.assertLess(len(done_before), 24, "the kill came after everything was answered")

        api = FakeApi()
        try:
            r = self.capture(api.url, out)
        finally:
            api.close()
        self.assertEqual(r.returncode, 0, r.stderr)
        got, man = read_text_store(out)
        self.assertTrue(man["complete"])
        self.assertEqual(sorted(got), sorted(want))
        for sid in want:
            self.assertEqual(stable(got[sid]), stable(want[sid]), sid)
        # Nothing finished before the kill was asked again (seed identifies the sample).
        seeds_before = {want[s]["server"]["response_id"] for s in done_before}
        asked_again = {f"chatcmpl-{seed}" for seed in api.answered}
        self.assertFalse(seeds_before & asked_again)
        self.assertEqual(len(api.answered), 24 - len(done_before))

    def test_ctrl_c_stops_cleanly_and_resumes(self):
        out = os.path.join(self.dir, "interrupted")
        api = FakeApi(delay=0.25)  # 24 samples / 4 in flight take >= 1.5 s: the signal comes long before the end
        try:
            p = subprocess.Popen([RETORT, "capture", "--teacher-url", api.url, "--teacher-model", "fake-teacher",
                                  "--prompts", self.prompts, "--out", out, "--samples", "2", "--k", "5",
                                  "--seed", "11", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            deadline = time.time() + 60
            while time.time() < deadline and len(api.answered) < 3:
                time.sleep(0.01)
            p.send_signal(signal.SIGINT)
            _, err = p.communicate(timeout=60)
        finally:
            api.close()
        self.assertEqual(p.returncode, 130, err)
        self.assertIn("run the same command again to resume", err)
        recs, man = read_text_store(out)
        self.assertFalse(man["complete"])
        self.assertGreaterEqual(len(recs), 3)  # everything answered was kept
        api = FakeApi()
        try:
            r = run(["capture", "--teacher-url", api.url, "--teacher-model", "fake-teacher", "--prompts", self.prompts,
                     "--out", out, "--samples", "2", "--k", "5", "--seed", "11", "--quiet"])
        finally:
            api.close()
        self.assertEqual(r.returncode, 0, r.stderr)
        recs, man = read_text_store(out)
        self.assertTrue(man["complete"])
        self.assertEqual(sorted(recs), list(range(24)))
        self.assertEqual(man["source"]["usage"]["runs"], 2)

    def test_a_refused_prompt_is_a_recorded_skip(self):
        api = FakeApi(script=lambda n, body: "400" if "number 3:" in body["messages"][-1]["content"] else None)
        out = os.path.join(self.dir, "refused")
        try:
            r = self.capture(api.url, out)
        finally:
            api.close()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("2 refused", r.stderr)
        recs, man = read_text_store(out)
        self.assertEqual(len(recs), 22)
        self.assertTrue(man["complete"])  # every sample is stored or recorded
        with open(os.path.join(out, "skipped.jsonl")) as f:
            skipped = [json.loads(l) for l in f]
        self.assertEqual(sorted(s["sample_id"] for s in skipped), [6, 7])
        self.assertIn("refused by policy", skipped[0]["reason"])

    def test_keys_file_spreads_samples_over_keys(self):
        """--api-keys-file: sample i (prompt p, sample s: i = 2p + s here) is asked with key i mod 3."""
        keys = os.path.join(self.dir, "keys.txt")
        with open(keys, "w") as f:
            f.write("# a crawler's accounts\nsk-a\n\n  sk-b  \nsk-c\n")
        api = FakeApi()
        out = os.path.join(self.dir, "store")
        try:
            r = self.capture(api.url, out, "--api-keys-file", keys, "--concurrency", "2")
        finally:
            api.close()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(read_text_store(out)[0]), 24)
        used = {}
        for text, auth in api.auth:
            p = int(re.search(r"number (\d+)", text).group(1))
            used.setdefault(p, []).append(auth)
        for p in range(12):
            self.assertEqual(sorted(used[p]), sorted("Bearer sk-" + "abc"[(2 * p + s) % 3] for s in range(2)), p)
        empty = os.path.join(self.dir, "empty.txt")
        with open(empty, "w") as f:
            f.write("# none\n")
        r = self.capture("http://127.0.0.1:9/v1", os.path.join(self.dir, "e"), "--api-keys-file", empty)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("no API key", r.stderr)

    def test_bad_endpoints_get_clear_errors(self):
        api = FakeApi(key="sk-right")
        try:
            r = run(["capture", "--teacher-url", api.url, "--teacher-model", "m", "--prompts", self.prompts,
                     "--out", os.path.join(self.dir, "a"), "--api-key-env", "FAKE_KEY", "--quiet"],
                    env={"FAKE_KEY": "sk-wrong"})
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("401", r.stderr)
            self.assertIn("API key", r.stderr)
            r = run(["capture", "--teacher-url", api.url, "--teacher-model", "m", "--prompts", self.prompts,
                     "--out", os.path.join(self.dir, "b"), "--api-key-env", "NOT_SET_ANYWHERE", "--quiet"])
            self.assertIn("NOT_SET_ANYWHERE", r.stderr)
            self.assertNotEqual(r.returncode, 0)
        finally:
            api.close()
        api = FakeApi(logprobs=False)
        try:
            r = run(["capture", "--teacher-url", api.url, "--teacher-model", "m", "--prompts", self.prompts,
                     "--out", os.path.join(self.dir, "c"), "--quiet"])
        finally:
            api.close()
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("--signal text", r.stderr)

        # An HTTP server that is not an OpenAI API.
        class Plain(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = b"<html>hello</html>"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        httpd = http.server.HTTPServer(("127.0.0.1", 0), Plain)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            r = run(["capture", "--teacher-url", f"http://127.0.0.1:{httpd.server_address[1]}/v1", "--teacher-model",
                     "m", "--prompts", self.prompts, "--out", os.path.join(self.dir, "d"), "--quiet"])
        finally:
            httpd.shutdown()
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("OpenAI-compatible", r.stderr)
        # Nothing listening there.
        r = run(["capture", "--teacher-url", "http://127.0.0.1:9/v1", "--teacher-model", "m", "--prompts",
                 self.prompts, "--out", os.path.join(self.dir, "e"), "--max-retries", "1", "--backoff", "0.01",
                 "--quiet"])
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("could not connect", r.stderr)


# ---- through a real retort serve ---------------------------------------------------------------------------

@unittest.skipUnless(os.path.exists(os.path.join(model_cache(), MODEL + ".gguf")),
                     f"needs {MODEL} in the model cache (scripts/setup.sh)")
class ThroughRetortServe(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.home = cls.tmp.name
        env = dict(os.environ, RETORT_HOME=cls.home, OMP_WAIT_POLICY="passive")
        log = os.path.join(cls.home, "serve.log")
        cls.log = open(log, "w")
        # Its own RETORT_HOME (database, keys), so the model by path; captures below use the usual cache.
        cls.proc = subprocess.Popen([RETORT, "serve", "--port", "0", "--model",
                                     os.path.join(model_cache(), MODEL + ".gguf"), "--model-id", MODEL, "--no-keys",
                                     "--watermark",
                                     "none", "--parallel", "4", "--ctx-size", "512"], env=env, stdout=cls.log,
                                    stderr=cls.log)
        deadline = time.time() + 120
        cls.url = None
        while time.time() < deadline and cls.url is None:
            assert cls.proc.poll() is None, read_text(log)
            m = re.search(r"on http://127\.0\.0\.1:(\d+)", read_text(log))
            if m:
                cls.url = f"http://127.0.0.1:{m.group(1)}/v1"
            time.sleep(0.05)
        assert cls.url, read_text(log)

    @classmethod
    def tearDownClass(cls):
        cls.proc.terminate()
        cls.proc.wait(60)
        cls.log.close()
        cls.tmp.cleanup()

    def compare(self, prompts, *flags):
        local, remote = os.path.join(self.home, "local"), os.path.join(self.home, "remote")
        for d in (local, remote):
            subprocess.run(["rm", "-rf", d])
        common = ["--prompts", prompts, "--max-tokens", "24", "--samples", "2", "--seed", "7", "--k", "20",
                  "--quiet", *flags]
        r = run(["capture", "--teacher", MODEL, "--out", local, *common])
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run(["capture", "--teacher-url", self.url, "--teacher-model", MODEL, "--teacher-tokenizer", MODEL,
                 "--out", remote, "--concurrency", "4", *common])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("warning", r.stderr)  # prompt lengths agree with the server's
        want, wman, _ = read_signal_store(local)
        got, gman, prov = read_signal_store(remote)
        self.assertEqual(gman["tokenizer_hash"], wman["tokenizer_hash"])
        self.assertEqual(gman["source"]["stop_signal"], "label")
        self.assertTrue(gman["complete"])
        self.assertEqual(sorted(got), sorted(want))
        stops = 0
        for sid in want:
            wt, wpl, wlp, wids, wtop, wtail = want[sid]
            gt, gpl, glp, gids, gtop, gtail = got[sid]
            self.assertEqual(gt, wt, f"sample {sid}: other tokens")
            self.assertEqual(gpl, wpl)
            n = len(wt) - wpl
            # A completion that ended on the stop token: its position holds the API's hard label.
            last_is_stop = n > 0 and gids[-1][0] == wt[-1] and gtop[-1][0] == 0.0 and gtop[-1][1] == -9999.0
            m = n - 1 if last_is_stop else n
            stops += last_is_stop
            for j in range(m):
                self.assertLess(abs(glp[j] - wlp[j]), 1e-4, (sid, j))
                self.assertEqual(gids[j], wids[j], (sid, j))
                for a, b in zip(gtop[j], wtop[j]):
                    self.assertLess(abs(a - b), 1e-4, (sid, j))
                self.assertLess(abs(gtail[j] - wtail[j]), 1e-4, (sid, j))
            if last_is_stop:
                self.assertEqual(glp[-1], 0.0)
                self.assertEqual(gtail[-1], 0.0)
        # Provenance: one row per sample, the model the server reported and its fingerprint.
        self.assertEqual(sorted(p["sample_id"] for p in prov), sorted(want))
        self.assertTrue(all(p["model"] == MODEL and p["system_fingerprint"].startswith("fp_") for p in prov))
        return stops

    def test_chat_capture_equals_a_local_capture(self):
        prompts = os.path.join(self.home, "chat.jsonl")
        with open(prompts, "w") as f:
            for q in ["What is 2+2? Answer in one word.", "Name a colour.", "Say hi."]:
                f.write(json.dumps({"prompt": q}) + "\n")
            f.write(json.dumps({"messages": [{"role": "system", "content": "Be terse."},
                                             {"role": "user", "content": "Capital of France?"}]}) + "\n")
        stops = self.compare(prompts)
        self.assertGreater(stops, 0, "no completion ended on its stop token: the hard label went untested")

    def test_completions_capture_equals_a_local_capture(self):
        prompts = os.path.join(self.home, "raw.jsonl")
        with open(prompts, "w") as f:
            for q in ["The capital of France is", "1, 2, 3, 4,"]:
                f.write(json.dumps({"prompt": q}) + "\n")
        self.compare(prompts, "--no-chat")


# ---- through llama.cpp's llama-server (optional) -----------------------------------------------------------

def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_json(url, body, timeout=60):
    import urllib.request
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


LLAMA_SERVER = os.environ.get("LLAMA_SERVER", "")


@unittest.skipUnless(LLAMA_SERVER and os.access(LLAMA_SERVER, os.X_OK) and
                     os.path.exists(os.path.join(model_cache(), MODEL + ".gguf")),
                     "optional: set LLAMA_SERVER to a llama.cpp llama-server binary (with " + MODEL +
                     " in the model cache) to capture from llama-server")
class ThroughLlamaServer(unittest.TestCase):
    """A non-retort OpenAI-compatible server. What llama-server (llama.cpp, 2025-11) answers that matters here:
    every logprob entry carries the token's "id"; special tokens come with no bytes ("token": "", "bytes": []);
    the token that ended the completion is listed (no bytes); /v1/completions answers logprobs in the chat shape
    ({"content": [...]}); "model" echoes the request; a token ending inside a UTF-8 character is listed together
    with the next one (not exercised here: ASCII prompts). --jinja makes it apply the model's own chat template,
    as retort does, so prompt lengths agree."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.dir = cls.tmp.name
        port = free_port()
        cls.base = f"http://127.0.0.1:{port}"
        cls.url = cls.base + "/v1"
        cls.log_path = os.path.join(cls.dir, "llama-server.log")
        cls.log = open(cls.log_path, "w")
        cls.proc = subprocess.Popen([LLAMA_SERVER, "-m", os.path.join(model_cache(), MODEL + ".gguf"), "--host",
                                     "127.0.0.1", "--port", str(port), "-c", "2048", "-np", "2", "-t", "1", "--jinja"],
                                    stdout=cls.log, stderr=cls.log)
        import urllib.request
        deadline = time.time() + 60
        while True:
            assert cls.proc.poll() is None, read_text(cls.log_path)[-3000:]
            try:
                with urllib.request.urlopen(cls.base + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass  # not listening yet, or 503 while the model loads
            assert time.time() < deadline, "llama-server did not become healthy: " + read_text(cls.log_path)[-3000:]
            time.sleep(0.1)

    @classmethod
    def tearDownClass(cls):
        cls.proc.terminate()
        try:
            cls.proc.wait(30)
        except subprocess.TimeoutExpired:
            cls.proc.kill()
            cls.proc.wait()
        cls.log.close()
        cls.tmp.cleanup()

    def capture(self, prompts, out, *extra, seed=7):
        r = run(["capture", "--teacher-url", self.url, "--teacher-model", MODEL, "--prompts", prompts, "--out", out,
                 "--max-tokens", "24", "--seed", str(seed), "--k", "5", "--concurrency", "2", "--quiet", *extra],
                timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr + read_text(self.log_path)[-2000:])
        self.assertNotIn("warning", r.stderr)  # the server's prompt lengths agree with the tokenizer's
        return r

    def decode(self, ids):
        r = run(["tokenize", "--model", MODEL, "--decode", ",".join(map(str, ids)), "--json"])
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)["text"]

    def check_stores(self, prompts, n_samples, *flags):
        """Captures `prompts` into a signal store and a text store; checks both and that they agree."""
        sig, txt = os.path.join(self.dir, "sig" + "".join(flags)), os.path.join(self.dir, "txt" + "".join(flags))
        self.capture(prompts, sig, "--teacher-tokenizer", MODEL, *flags)
        self.capture(prompts, txt, *flags)
        got, man, prov = read_signal_store(sig)
        recs, tman = read_text_store(txt)
        for m in (man, tman):
            self.assertTrue(m["complete"])
            self.assertEqual(m["source"]["usage"]["unmappable"] + m["source"]["usage"]["refused"], 0, m["source"])
        self.assertEqual(sorted(got), list(range(n_samples)))  # every sample once (read_* assert no duplicates)
        self.assertEqual(sorted(recs), list(range(n_samples)))
        self.assertEqual(man["source"]["stop_signal"], "label")

        # What llama-server says it is, asked directly: provenance must name it.
        chat = "--no-chat" not in flags
        probe = post_json(self.url + ("/chat/completions" if chat else "/completions"),
                          dict(model=MODEL, max_tokens=1, **({"messages": [{"role": "user", "content": "hi"}]}
                                                            if chat else {"prompt": "hi"})))
        self.assertEqual(sorted(p["sample_id"] for p in prov), list(range(n_samples)))
        for p in prov:
            self.assertEqual(p["model"], probe["model"])
            self.assertEqual(p["system_fingerprint"], probe.get("system_fingerprint"))
            self.assertEqual(p["endpoint"], self.url)
        self.assertEqual(man["source"]["servers_last_run"][0]["model"], probe["model"])

        k = man["k"]
        stops = 0
        for sid in range(n_samples):
            toks, pl, lp, top_ids, top_lp, tail = got[sid]
            rec = recs[sid]
            # Text store: the token bytes are the completion, and the server's ids decode to it.
            pieces = rec["tokens"]
            self.assertEqual(b"".join(bytes.fromhex(t["bytes"]) for t in pieces), rec["completion"].encode(), sid)
            self.assertTrue(all("id" in t and all(len(a) == 3 for a in t["top"]) for t in pieces), sid)
            self.assertEqual(rec["server"]["model"], probe["model"])
            stopped = rec["finish_reason"] == "stop"
            if stopped:  # llama-server lists the stop token: no bytes, a special id
                self.assertEqual(pieces[-1]["bytes"], "")
                pieces = pieces[:-1]
            self.assertEqual(self.decode([t["id"] for t in pieces]), rec["completion"], sid)
            # Signal store: the same seed gave the same tokens; ids decode to the completion.
            gen = toks[pl:]
            if stopped:
                stops += 1
                self.assertEqual(gen[-1], recs[sid]["tokens"][-1]["id"])  # the label is the listed stop token
                self.assertEqual((lp[-1], top_ids[-1][0], top_lp[-1][0], tail[-1]), (0.0, gen[-1], 0.0, 0.0))
                gen, n = gen[:-1], len(gen) - 1
            else:
                n = len(gen)
            self.assertEqual(gen, [t["id"] for t in pieces], f"sample {sid}: the same seed gave other tokens")
            self.assertEqual(self.decode(gen), rec["completion"], sid)
            for j in range(n):
                self.assertTrue(math.isfinite(lp[j]) and lp[j] <= 0, (sid, j, lp[j]))
                self.assertTrue(all(math.isfinite(x) and x <= 0 for x in top_lp[j]), (sid, j))
                self.assertEqual(top_lp[j], sorted(top_lp[j], reverse=True), (sid, j))
                self.assertEqual(len(set(top_ids[j])), k, (sid, j))
                self.assertEqual(top_ids[j], [a[2] for a in sorted(pieces[j]["top"][:k], key=lambda a: (-a[1], a[2]))],
                                 (sid, j))
                self.assertLess(abs(lp[j] - pieces[j]["logprob"]), 1e-6, (sid, j))
                if gen[j] in top_ids[j]:
                    self.assertEqual(lp[j], top_lp[j][top_ids[j].index(gen[j])], (sid, j))
                self.assertTrue(0.0 <= tail[j] <= 1.0, (sid, j))
        return recs, stops

    def test_chat_capture(self):
        prompts = os.path.join(self.dir, "chat.jsonl")
        with open(prompts, "w") as f:
            for q in ["What is 2+2? Answer in one word.", "Name a colour.", "Say hi."]:
                f.write(json.dumps({"prompt": q}) + "\n")
        recs, stops = self.check_stores(prompts, 6, "--samples", "2")
        self.assertGreater(stops, 0, "no completion ended on its stop token: the listed stop token went untested")
        # The seed is honoured: another --seed gives other text.
        other = os.path.join(self.dir, "other-seed")
        self.capture(prompts, other, "--samples", "2", "--signal", "text", seed=8)
        again, _ = read_text_store(other)
        self.assertNotEqual([again[s]["completion"] for s in range(6)], [recs[s]["completion"] for s in range(6)])

    def test_completions_capture(self):
        prompts = os.path.join(self.dir, "raw.jsonl")
        with open(prompts, "w") as f:
            for q in ["The capital of France is", "1, 2, 3, 4,"]:
                f.write(json.dumps({"prompt": q}) + "\n")
        self.check_stores(prompts, 2, "--no-chat")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--retort", required=True)
    a, rest = ap.parse_known_args()
    RETORT = os.path.abspath(a.retort)
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
