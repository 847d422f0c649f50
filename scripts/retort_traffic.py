"""Traffic against a real `retort serve` on loopback: start and stop a server, create API keys, replay recorded
users through the official openai client. Shared by `retort demo` (scripts/demo.py) and bench/monitor_eval.py.

Replayed requests carry their recorded time in X-Retort-Replay-Time-Ms (the server must run with
monitor_replay_clock), so hours of traffic replay in minutes; the crawl monitor sees them at those times.
"""
import collections
import concurrent.futures as cf
import json
import os
import re
import signal
import subprocess
import threading
import time

import openai

T0_MS = 1_800_000_000_000  # replay epoch: recorded time t (seconds) is sent as T0_MS + 1000 t


def split_accounts(benign):
    """Whole accounts: within each kind in order of size (fewest requests first, then name), every third
    account to calibration, starting with the first — every kind of user is in the calibration (a kind
    with one or two accounts gives it its smaller one), and about two thirds of the requests are left
    to evaluate on."""
    kinds = collections.defaultdict(collections.Counter)
    for r in benign:
        kinds[r["kind"]][r["account"]] += 1
    cal, ev = set(), set()
    for kind, accs in sorted(kinds.items()):
        for i, a in enumerate(sorted(accs, key=lambda a: (accs[a], a))):
            (cal if i % 3 == 0 else ev).add(a)
    return cal, ev


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def write_jsonl(path, records):
    """Atomically: a reader never sees half a file."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(path + ".tmp", path)


class Server:
    """`retort serve --config CONFIG --db DB --port 0` with RETORT_HOME=home (its master watermark key and
    logs live there); the port is read from the line the server prints when it listens."""

    def __init__(self, retort, home, db, config, log_name="serve.log", threads=0):
        self.retort, self.db, self.home = retort, db, home
        cfg_path = os.path.join(home, "serve-%d.json" % int(time.time() * 1000))
        with open(cfg_path, "w") as f:
            json.dump(config, f)
        self.log_path = os.path.join(home, log_name)
        self.log = open(self.log_path, "a")
        cmd = [retort, "serve", "--config", cfg_path, "--db", db, "--port", "0"]
        if threads:
            cmd += ["--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, RETORT_HOME=home))
        self.port = None
        deadline = time.time() + 180
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.write(line)
            m = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            self.log.flush()
            raise RuntimeError("the server did not start; see " + self.log_path)
        self.url = "http://127.0.0.1:%d/v1" % self.port
        threading.Thread(target=self._drain, daemon=True).start()

    def health(self):
        import urllib.request
        with urllib.request.urlopen("http://127.0.0.1:%d/health" % self.port, timeout=30) as r:
            return json.load(r)

    def _drain(self):
        for line in self.proc.stderr:
            self.log.write(line)
            self.log.flush()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=120)
        self.log.flush()


def create_keys(retort, home, db, accounts, admin=False):
    """account -> its new API key (shown once by `retort keys create`)."""
    keys = {}
    for a in accounts:
        cmd = [retort, "keys", "create", "--account", a, "--db", db] + (["--admin"] if admin else [])
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, RETORT_HOME=home))
        if out.returncode != 0:
            raise RuntimeError("retort keys create --account %s: %s" % (a, out.stderr.strip()))
        keys[a] = re.search(r"rtk_[A-Za-z0-9_-]+", out.stdout + out.stderr).group(0)
    return keys


def replay(url, keys, requests, workers=8, speedup=None, clock_start=None, max_tokens=None, progress=None,
           stop=None):
    """Sends `requests` (dicts: account, t, user [, conversation, turn, system], params) in time order; one
    account's requests one after another (a follow-up needs the answer before it), accounts in parallel.

    speedup: None sends as fast as the server answers; S sends request t at wall time clock_start + t / S
    (Unix seconds; the server's own start, /health monitor_clock.start_unix_ms, so that its live clock —
    monitor_clock_speedup — and the replay agree; default now). max_tokens: generation cap for
    replayed requests (X-Retort-Replay-Max-Tokens; the monitor still sees the recorded parameters).
    progress(sent, total) is called every 100 requests; stop (a threading.Event) ends the replay early.
    Returns {HTTP status: count} of refused requests."""
    clients = {a: openai.OpenAI(base_url=url, api_key=k, max_retries=0, timeout=600) for a, k in keys.items()}
    history = {}  # conversation -> messages so far
    last = {}     # account -> future of its previous request
    errors = collections.Counter()
    sent = [0]
    lock = threading.Lock()
    start = time.time() if clock_start is None else clock_start

    def one(r):
        if stop is not None and stop.is_set():
            return
        conv = r.get("conversation")
        if conv is not None:
            if r.get("turn", 0) == 0:
                history[conv] = ([{"role": "system", "content": r["system"]}] if r.get("system") else [])
            msgs = history[conv] + [{"role": "user", "content": r["user"]}]
        else:
            msgs = [{"role": "user", "content": r["user"]}]
        headers = {"X-Retort-Replay-Time-Ms": str(T0_MS + int(r["t"] * 1000))}
        if max_tokens is not None:
            headers["X-Retort-Replay-Max-Tokens"] = str(max_tokens)
        try:
            resp = clients[r["account"]].chat.completions.create(model="", messages=msgs, extra_headers=headers,
                                                                 **dict(r.get("params", {})))
            answer = resp.choices[0].message.content or ""
        except openai.APIStatusError as e:
            with lock:
                errors[str(e.status_code)] += 1
            answer = ""
        if conv is not None:
            history[conv] = msgs + [{"role": "assistant", "content": answer}]
        with lock:
            sent[0] += 1
            if progress is not None and sent[0] % 100 == 0:
                progress(sent[0], len(requests))

    with cf.ThreadPoolExecutor(workers) as pool:
        for r in sorted(requests, key=lambda r: r["t"]):
            if stop is not None and stop.is_set():
                break
            if speedup:
                wait = start + r["t"] / speedup - time.time()
                if wait > 0:
                    if stop is not None:
                        stop.wait(wait)
                    else:
                        time.sleep(wait)
            prev = last.get(r["account"])
            if prev is not None:
                prev.result()
            last[r["account"]] = pool.submit(one, r)
        for f in last.values():
            f.result()
    return dict(errors)
