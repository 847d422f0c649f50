#!/usr/bin/env python3
"""`retort audit radioactivity` as an investigator runs it: the closed-model test against a real
`retort serve` on loopback (a watermarking server gives the account away; a clean one does not), the
open-model test reading our watermarked texts through the clean teacher (no trace: the null holds), and
bad input (an unreachable URL, texts without the field, too little text) giving clear errors or an explicit
"not enough evidence" without a p-value. Then `retort audit report` turns those results into the case file,
which headless Chromium (Debian's `chromium`) must render with its verdict and charts.

Run by CTest as:  python3 tests/audit/test_radioactivity_cli.py --retort build/retort
Needs the default model in the model cache (scripts/setup.sh); skips with a message when it is absent.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "serve"))
import test_openai_client as serve_test  # noqa: E402  (ServerProcess, create_key, model_cache)

RETORT = None
MODEL = "smollm2-135m-instruct"
TOPICS = ["the ocean", "bread", "volcanoes", "chess", "trains", "bees", "winter", "maps", "rivers", "clocks",
          "owls", "glass"]


def run(*args, env=None, check=True):
    p = subprocess.run([RETORT, *args], capture_output=True, text=True, env=env, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"retort {' '.join(args)} exited {p.returncode}:\n{p.stderr}")
    return p


class RadioactivityCli(unittest.TestCase):
    results = {}  # name -> a result file written with --out, for the case file (the last test)

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.dir = cls.tmp.name
        cls.key = os.path.join(cls.dir, "key")
        run("watermark", "keygen", "-o", cls.key)
        cls.prompts = os.path.join(cls.dir, "prompts.jsonl")
        with open(cls.prompts, "w") as f:
            for i, t in enumerate(TOPICS):
                f.write(json.dumps({"id": i, "messages": [{"role": "user", "content": f"Write a paragraph about {t}."}]})
                        + "\n")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def audit(self, *args, check=True):
        p = run("audit", "radioactivity", "--key-file", self.key, "--json", *args, check=check)
        return (json.loads(p.stdout) if p.returncode == 0 else None), p

    def test_closed_model_through_a_server_finds_the_account(self):
        home = os.path.join(self.dir, "serve_wm")
        os.makedirs(home)
        key = serve_test.create_key(home, "mallory")
        # The server watermarks each account's text with the account's key derived from this master key.
        server = serve_test.ServerProcess(home, ["--watermark", "kgw", "--watermark-key-file", self.key])
        try:
            accounts = os.path.join(self.dir, "accounts.txt")
            with open(accounts, "w") as f:
                f.write("alice\nbob\nmallory\ncarol\n")
            env_key = dict(os.environ, SUSPECT_KEY=key)
            # 12 answers of 40 tokens: ~400 distinct pairs scored per account (>= 100 needed). Two runs (a new
            # key each) gave mallory p_holm 6e-41 and 3e-37 (test: < 1e-5), every other account 1.0 (test:
            # > 1e-3); 80 tokens gave 9e-92.
            p = run("audit", "radioactivity", "--suspect-url", server.base + "/v1", "--api-key-env", "SUSPECT_KEY",
                    "--prompts", self.prompts, "--key-file", self.key, "--accounts", accounts, "--max-tokens", "40",
                    "--temperature", "1", "--min-tokens", "100", "--json",
                    "--out", os.path.join(self.dir, "suspect_closed.json"), env=env_key)
            r = json.loads(p.stdout)
        finally:
            self.assertEqual(server.stop(), 0)
        with open(os.path.join(self.dir, "suspect_closed.json")) as f:
            self.assertEqual(json.load(f), r)  # --out holds what --json printed
        RadioactivityCli.results["suspect"] = os.path.join(self.dir, "suspect_closed.json")
        self.assertEqual(r["mode"], "closed")
        self.assertEqual(r["suspect"]["model_reported"], MODEL)
        self.assertEqual(r["suspect"]["requests"]["sent"], 1 + len(TOPICS))  # GET /models first, then each prompt
        self.assertEqual(r["inputs"]["generated_texts"], len(TOPICS))
        self.assertTrue(r["enough_evidence"])
        by = {a["account"]: a for a in r["accounts"]}
        self.assertLess(by["mallory"]["p_holm"], 1e-5, by["mallory"])
        for acc in ("alice", "bob", "carol"):
            self.assertGreater(by[acc]["p_holm"], 1e-3, by[acc])
        # The master key itself never watermarked anything: no evidence under it.
        self.assertGreater(r["test"]["p_value"], 1e-3, r["test"])
        self.assertNotIn(json.dumps(open(self.key).read().strip()), p.stdout, "the key never appears in output")

    def test_clean_server_and_open_model_reading_show_no_trace(self):
        # Our watermarked texts: the teacher with our key (KGW, δ = 2), prompts kept beside them.
        out = run("generate", "--prompts", self.prompts, "--watermark", "kgw", "--watermark-key-file", self.key,
                  "--max-tokens", "96", "--temperature", "1", "--seed", "5", "--json").stdout
        texts = os.path.join(self.dir, "texts.jsonl")
        with open(self.prompts) as fp, open(texts, "w") as ft:
            for line, res in zip(fp, out.splitlines()):
                rec = json.loads(line)
                rec["completion"] = json.loads(res)["text"]
                ft.write(json.dumps(rec) + "\n")
        # Open model: the teacher, never trained on these texts, reads them.
        r, _ = self.audit("--suspect", MODEL, "--texts", texts, "--min-tokens", "200",
                          "--out", os.path.join(self.dir, "control_open.json"))
        RadioactivityCli.results["control_open"] = os.path.join(self.dir, "control_open.json")
        self.assertEqual(r["mode"], "open")
        self.assertTrue(r["suspect"]["same_tokenizer"])
        self.assertTrue(r["enough_evidence"], r["counts"])
        self.assertGreater(r["test"]["p_value"], 1e-3, r)
        self.assertIn("no evidence", r["verdict"])
        c = r["counts"]
        self.assertEqual(c["positions"], c["no_window"] + c["in_prompt"] + c["unseen"] + c["unscorable"] +
                         c["in_text"] + c["repeated"] + c["scored"])
        # Closed model against a server that does not watermark: no trace either.
        home = os.path.join(self.dir, "serve_clean")
        os.makedirs(home)
        key = serve_test.create_key(home, "someone")
        server = serve_test.ServerProcess(home, ["--watermark", "none"])
        try:
            # 12 answers of 32 tokens: ~310 distinct pairs scored (>= 100 needed; p was 0.48 and 0.78). Were
            # the server watermarking, far fewer pairs would show it: the test above gets p < 1e-36 from ~400.
            p = run("audit", "radioactivity", "--suspect-url", server.base, "--api-key-env", "K", "--texts", texts,
                    "--max-tokens", "32", "--temperature", "1", "--min-tokens", "100", "--key-file", self.key,
                    "--json", "--out", os.path.join(self.dir, "control_closed.json"), env=dict(os.environ, K=key))
            r = json.loads(p.stdout)
        finally:
            self.assertEqual(server.stop(), 0)
        RadioactivityCli.results["control_closed"] = os.path.join(self.dir, "control_closed.json")
        self.assertEqual(r["inputs"]["prompts_count"], len(TOPICS))  # the texts' own prompts were asked
        self.assertGreater(r["test"]["p_value"], 1e-3, r)

    def test_bad_input_is_named(self):
        texts = os.path.join(self.dir, "bad.jsonl")
        with open(texts, "w") as f:
            f.write(json.dumps({"prompt": "hi", "answer": "hello there"}) + "\n")
        r, p = self.audit("--suspect", MODEL, "--texts", texts, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("bad.jsonl:1", p.stderr)
        self.assertIn("--field", p.stderr)
        # Too little text: an explicit "not enough evidence" and no p-value, with the count that would help.
        with open(texts, "w") as f:
            f.write(json.dumps({"completion": "A short text about bees and honey."}) + "\n")
        r, p = self.audit("--suspect", MODEL, "--texts", texts)
        self.assertFalse(r["enough_evidence"])
        self.assertIsNone(r["test"]["p_value"])
        self.assertIn("not enough evidence", r["verdict"])
        # Nothing listens on this port.
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        r, p = self.audit("--suspect-url", f"http://127.0.0.1:{port}/v1", "--suspect-model", MODEL, "--prompts",
                          self.prompts, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn(f"127.0.0.1:{port}", p.stderr)
        # The open test needs weights.
        r, p = self.audit("--suspect-url", f"http://127.0.0.1:{port}", "--mode", "open", "--texts", texts, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("--mode closed", p.stderr)

    def test_z_case_file_renders_in_chromium(self):
        # Runs last (unittest sorts by name): the results the tests above wrote become the case file.
        need = ("suspect", "control_open", "control_closed")
        if not all(k in self.results for k in need):
            self.skipTest("the radioactivity tests above did not all run (a filter?)")
        case = os.path.join(self.dir, "case")
        p = run("audit", "report", "--suspect-result", self.results["suspect"], "--control-result",
                self.results["control_open"] + "," + self.results["control_closed"], "--title", "Case 7: the mallory API",
                "--out", case)
        self.assertIn("wrote " + os.path.join(case, "case.html"), p.stdout)
        with open(os.path.join(case, "case.json")) as f:
            c = json.load(f)
        v = c["verdict"]
        # The master key watermarked nothing; mallory's key did, and the server's text was mallory's.
        self.assertEqual(v["finding"], "evidence", v)
        self.assertIn('account "mallory"', v["paragraph"])
        self.assertEqual(v["test_families"], 2)
        self.assertLess(v["strongest_log10_p"], -5)
        self.assertEqual(c["radioactivity"]["calibration"]["controls_below_1e-3"], 0)
        self.assertEqual(c["radioactivity"]["calibration"]["controls_with_p"], 2)
        with open(self.key) as f:
            key_text = f.read().strip()
        with open(os.path.join(case, "case.html")) as f:
            html = f.read()
        for text in (html, json.dumps(c)):
            self.assertNotIn(key_text, text, "the key never appears in the case file")
        self.assertNotIn("<script", html)
        # Self-contained: nothing fetched (no scripts, stylesheets, images or fonts from elsewhere).
        self.assertNotRegex(html, r'(src|href)\s*=\s*"?(https?:|//)')
        self.assertNotIn("@import", html)
        self.assertNotIn("<link", html)

        chromium = shutil.which(os.environ.get("RETORT_CHROMIUM", "chromium")) or shutil.which("chromium-browser")
        if not chromium:
            self.skipTest("chromium not found: apt-get install chromium (scripts/setup.sh installs it)")
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--user-data-dir=" + os.path.join(self.dir, "profile")]
        url = "file://" + os.path.join(case, "case.html")
        dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
        self.assertEqual(dom.returncode, 0, dom.stderr)
        d = dom.stdout
        self.assertIn('id="verdict"', d)
        self.assertIn("Verdict (evidence).", d)
        self.assertIn("mallory", d)
        self.assertEqual(d.count("<svg"), html.count("<svg"))
        self.assertGreaterEqual(d.count("<svg"), 2)  # the p-value bars and the calibration chart
        self.assertEqual(d.count("<rect class=\"bar\""), html.count("<rect class=\"bar\""))
        self.assertEqual(d.count("<tr"), html.count("<tr"))
        self.assertIn('class="tg"', d)  # the sample's green tokens
        shot = os.path.join(self.dir, "case.png")
        s = subprocess.run([chromium, *flags, "--hide-scrollbars", "--window-size=1200,2400", "--screenshot=" + shot, url],
                           capture_output=True, timeout=120)
        self.assertEqual(s.returncode, 0)
        self.assertGreater(os.path.getsize(shot), 40000)  # it paints (a blank page is a few KB)

    def test_z_report_bad_input_is_named(self):
        bad = os.path.join(self.dir, "not_a_result.json")
        with open(bad, "w") as f:
            json.dump({"hello": 1}, f)
        p = run("audit", "report", "--suspect-result", bad, "--out", os.path.join(self.dir, "c2"), check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("not_a_result.json", p.stderr)
        self.assertIn("audit radioactivity --out", p.stderr)
        with open(bad, "w") as f:
            f.write("{truncated")
        p = run("audit", "report", "--suspect-result", bad, "--out", os.path.join(self.dir, "c2"), check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("not JSON", p.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "c2", "case.html")))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--retort", required=True)
    args, rest = ap.parse_known_args()
    RETORT = os.path.abspath(args.retort)
    serve_test.RETORT = RETORT
    if not os.path.exists(os.path.join(serve_test.model_cache(), MODEL + ".gguf")):
        print(f"SKIP: the default model is not in {serve_test.model_cache()} (run scripts/setup.sh)")
        sys.exit(0)
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
