#!/usr/bin/env python3
"""`retort demo` in miniature: every link of the story, with tiny models this test makes, in a minute or two.

Run by CTest (CMakeLists.txt) as:  python3 tests/test_demo.py --retort build/retort

The test makes a tiny "teacher" (2 layers, width 64, random weights, the default model's tokenizer and chat
template: `retort distill --student ...init=random` for one step, then `retort export` to GGUF) and a second
tiny model as the unrelated control, then runs `retort demo --mini` with them: the monitor calibration, serve
with watermarks + monitor + recorded texts, the benign replay next to a one-account and a many-account
`retort capture --teacher-url`, `monitor report`, students trained on the harvest and on clean answers, the
radioactivity and provenance tests, the case file. What is checked is that each part hands the next what it
needs — the numbers of a random tiny model say nothing about the targets (bench: `retort demo`).
Needs the default model in the model cache for its tokenizer; skips with a message when it is absent.
"""
import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import unittest

RETORT = None
MODEL = "smollm2-135m-instruct"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model_cache():
    return os.path.join(os.environ.get("RETORT_HOME") or os.path.expanduser("~/.cache/retort"), "models")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def run(args, timeout=900, env=None):
    p = subprocess.run([RETORT] + args, capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, **(env or {})))
    if p.returncode != 0:
        raise AssertionError("retort %s exited %d:\n%s\n%s" % (" ".join(args), p.returncode, p.stdout[-3000:],
                                                              p.stderr[-3000:]))
    return p


class DemoInMiniature(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        teacher = os.path.join(model_cache(), MODEL + ".gguf")
        if not os.path.exists(teacher):
            raise unittest.SkipTest("%s is not in the model cache (scripts/setup.sh puts it there)" % teacher)
        cls.tmp = tempfile.TemporaryDirectory()
        d = cls.dir = cls.tmp.name
        with open(os.path.join(d, "p.jsonl"), "w") as f:
            for q in ["Name a colour.", "What is two plus two?", "Say hello.", "Name a fruit."]:
                f.write(json.dumps({"prompt": q}) + "\n")
        run(["capture", "--teacher", teacher, "--prompts", os.path.join(d, "p.jsonl"), "--max-tokens", "4",
             "--k", "4", "--out", os.path.join(d, "store"), "--quiet"])
        cls.tiny = {}
        for name, seed in [("teacher", 1), ("unrelated", 2)]:
            out = os.path.join(d, "make-" + name)
            run(["distill", "--teacher", teacher, "--data", os.path.join(d, "store"), "--student",
                 "layers=2,hidden=64,heads=2,kv_heads=1,ffn=128,init=random", "--loss", "ce", "--steps", "1",
                 "--batch", "2", "--seed", str(seed), "--eval-every", "0", "--quiet", "--out", out])
            cls.tiny[name] = os.path.join(d, name + ".gguf")
            run(["export", "-m", os.path.join(out, "final"), "--out", cls.tiny[name], "--type", "f32"])
        cls.out = os.path.join(d, "demo")
        # Its own RETORT_HOME: the monitor calibration is cached there, not in the user's cache.
        cls.home = os.path.join(d, "home")
        os.makedirs(os.path.join(cls.home, "models"))
        os.symlink(teacher, os.path.join(cls.home, "models", MODEL + ".gguf"))
        cls.demo = run(["demo", "--mini", "--out", cls.out, "--teacher", cls.tiny["teacher"], "--control-model",
                        cls.tiny["unrelated"], "--student-layers", "1"], env={"RETORT_HOME": cls.home})
        cls.summary = json.loads(read(os.path.join(cls.out, "demo.json")))

    @classmethod
    def tearDownClass(cls):
        if hasattr(cls, "tmp"):
            cls.tmp.cleanup()

    def test_progress_and_case_file_are_printed(self):
        out = self.demo.stdout
        for step in ["1. the provider", "2. traffic", "3. what the monitor saw", "4. distillation",
                     "5. the investigation", "6. the case file", "case file: "]:
            self.assertIn(step, out)
        html = read(os.path.join(self.out, "case", "case.html"))
        self.assertIn('id="verdict"', html)
        self.assertIn("<svg", html)

    def test_the_monitor_saw_every_account(self):
        m = self.summary["monitor"]
        self.assertEqual(m["distiller"]["sent"], m["distiller"]["wanted"])  # action flag: it was never stopped
        self.assertEqual(m["distiller"]["wanted"], 24)
        self.assertGreater(m["benign"]["requests"], 0)
        report = json.loads(run(["monitor", "report", "--db", os.path.join(self.out, "provider", "serve.db"),
                                 "--json"]).stdout.split("\nwrote ")[0])
        subjects = {v["subject"]: v for v in report["verdicts"]}
        self.assertEqual(subjects["distiller"]["requests"], 24)
        # The hydra's 16 requests went out round-robin over its 4 keys: 4 requests each.
        for h in ["hydra-00", "hydra-01", "hydra-02", "hydra-03"]:
            self.assertEqual(subjects[h]["requests"], 4, h)

    def test_served_texts_are_the_harvest(self):
        """The provider's record of what it served is what the distiller stored: the audit reads these."""
        served = [json.loads(l) for l in read(os.path.join(self.out, "audit", "served.jsonl")).splitlines()]
        by_account = {}
        for r in served:
            by_account.setdefault(r["account"], []).append(r["completion"])
        self.assertEqual(len(by_account["distiller"]), 24)
        self.assertEqual(sum(len(by_account["hydra-%02d" % i]) for i in range(4)), 16)
        # Every benign request was capped at one token by the replay header.
        for a, texts in by_account.items():
            if a.startswith("user-"):
                self.assertTrue(all(len(t) < 40 for t in texts), a)

    def test_students_and_audit_results_exist(self):
        for s in ["student", "control"]:
            self.assertTrue(os.path.exists(os.path.join(self.out, "students", s, "final", "config.json")), s)
        audit = self.summary["audit"]
        for k in ["student/open", "student/closed", "control/open", "control/closed", "unrelated/open"]:
            self.assertIn(k, audit)
            self.assertIsNotNone(audit[k]["scored"], k)
        self.assertIn("derived", audit["provenance"])
        case = json.loads(read(os.path.join(self.out, "case", "case.json")))
        self.assertIn(case["verdict"]["finding"], ["evidence", "inconclusive", "not_enough_evidence",
                                                   "provenance_only", "no_evidence"])

    def test_a_second_run_resumes(self):
        """Every step's output exists: the demo reruns in seconds and changes nothing."""
        before = read(os.path.join(self.out, "case", "case.json"))
        steps_before = json.loads(read(os.path.join(self.out, "demo.json")))["step_seconds"]
        p = run(["demo", "--mini", "--out", self.out, "--teacher", self.tiny["teacher"], "--control-model",
                 self.tiny["unrelated"], "--student-layers", "1"], env={"RETORT_HOME": self.home})
        self.assertIn("done before", p.stdout)
        self.assertIn("monitor calibration: cached", p.stdout)
        self.assertEqual(json.loads(read(os.path.join(self.out, "case", "case.json")))["verdict"],
                         json.loads(before)["verdict"])
        # The steps it skipped keep the first run's timings.
        again = json.loads(read(os.path.join(self.out, "demo.json")))
        self.assertTrue(again["resumed"])
        for step in ["capture-distiller", "distill-student"]:
            self.assertIn(step, steps_before)
            self.assertEqual(again["step_seconds"][step], steps_before[step], step)
        self.assertGreaterEqual(again["seconds_all_runs"], again["seconds"])


class ShippedCalibration(unittest.TestCase):
    """data/monitor/ holds the default teacher's monitor calibration, so a first `retort demo` does not spend
    four minutes making it. It must be what `python3 scripts/demo.py --make-calibration` makes now: from this
    traffic file and this recipe version (the demo ignores it otherwise, and the first run is slow again), and a
    calibration retort reads."""

    def test_made_from_this_traffic_and_recipe(self):
        sys.path.insert(0, os.path.join(ROOT, "scripts"))
        import demo  # noqa: E402
        base = os.path.join(ROOT, "data", "monitor", "calibration-%s" % MODEL)
        made_from = json.loads(read(base + ".made_from.json"))
        self.assertEqual(made_from["version"], demo.CALIBRATION_VERSION,
                         "remake it: python3 scripts/demo.py --make-calibration")
        self.assertEqual(made_from["traffic_sha256"],
                         demo.sha256_file(os.path.join(ROOT, "data", "traffic", "benign.jsonl")),
                         "data/traffic/benign.jsonl changed; remake it: python3 scripts/demo.py --make-calibration")
        with gzip.open(base + ".json.gz", "rt", encoding="utf-8") as f:
            cal = json.load(f)
        self.assertEqual(cal["format"], "retort-monitor-calibration/1")
        self.assertEqual(cal["model"], MODEL)
        self.assertEqual(cal["benign_requests"], made_from["replayed_requests"])
        teacher = os.path.join(model_cache(), MODEL + ".gguf")
        if os.path.exists(teacher):
            self.assertEqual(made_from["model_sha256"], demo.sha256_file(teacher))
            # retort reads it: rescoring an empty serve db against it
            with tempfile.TemporaryDirectory() as d:
                with open(os.path.join(d, "cal.json"), "w") as f:
                    json.dump(cal, f)
                run(["keys", "create", "--account", "someone", "--db", os.path.join(d, "serve.db")],
                    env={"RETORT_HOME": d})
                p = run(["monitor", "rescore", "--db", os.path.join(d, "serve.db"), "--calibration",
                         os.path.join(d, "cal.json"), "--json"], env={"RETORT_HOME": d})
                self.assertEqual(json.loads(p.stdout)["verdicts"], [])


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--retort", required=True)
    a, rest = ap.parse_known_args()
    RETORT = os.path.abspath(a.retort)
    unittest.main(argv=[sys.argv[0]] + rest)
