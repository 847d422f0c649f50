#!/usr/bin/env python3
"""Writes data/traffic/templated_crawler.jsonl: the prompts of a templated distillation crawler, a harvester
that covers a domain systematically with a few fixed templates over long lists of topics (issue 16).

    python3 data/traffic/make_templated_crawler.py           # (re)write templated_crawler.jsonl
    python3 data/traffic/make_templated_crawler.py --check   # verify it and print statistics

The file has the format of data/prompts (one {"prompt", "category"} object a line, plus "template" and
"topic"), so `retort capture --prompts data/traffic/templated_crawler.jsonl --teacher-url ...` runs it as is.
Lines go round-robin over the templates, so any prefix (--limit) is balanced. Stdlib only, fixed seed.
Topic lists written by the retort team.
"""
import argparse
import hashlib
import json
import os
import random
import sys
from collections import Counter

SEED = 20261203
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "templated_crawler.jsonl")

TEMPLATES = {
    "explain": "Explain {x} in detail, step by step, as a textbook would.",
    "write": "Write a {form} about {x}.",
    "compare": "What are the main differences between {a} and {b}? Give a structured comparison.",
    "guide": "Give a complete step-by-step guide to {x}.",
    "reason": "Solve the following problem. Think step by step and show all of your reasoning before the final answer: {x}",
    "facts": "List the ten most important facts about {x}, with a one-sentence explanation of each.",
}

CONCEPTS = {  # domain -> concepts, the way a harvester walks a syllabus
    "physics": ["Newton's second law of motion", "conservation of energy", "the photoelectric effect", "Ohm's law", "centripetal force",
                "the Doppler effect", "entropy", "wave-particle duality", "buoyancy and Archimedes' principle", "electromagnetic induction",
                "special relativity's time dilation", "nuclear fission", "friction", "projectile motion", "refraction of light"],
    "chemistry": ["covalent bonding", "the periodic table's groups and periods", "acid-base neutralization", "oxidation and reduction",
                  "chemical equilibrium and Le Chatelier's principle", "the mole concept", "catalysts", "isotopes", "the ideal gas law",
                  "electronegativity", "polymerization", "reaction rates", "hydrogen bonding", "electrolysis"],
    "biology": ["DNA replication", "protein synthesis", "the Krebs cycle", "the human immune response", "osmosis", "enzyme function",
                "Mendelian inheritance", "the nervous system's action potential", "ecosystems and food webs", "the structure of the heart",
                "homeostasis", "the carbon cycle", "evolution by natural selection", "the function of mitochondria", "antibiotic resistance"],
    "earth science": ["plate tectonics", "the rock cycle", "ocean currents", "how hurricanes form", "the formation of glaciers",
                      "earthquakes and seismic waves", "the layers of the atmosphere", "volcanic eruptions", "soil formation", "the water table"],
    "astronomy": ["the life cycle of a star", "black holes", "the Big Bang theory", "exoplanet detection", "the phases of the moon",
                  "solar and lunar eclipses", "the structure of the Milky Way", "tides and the moon's gravity", "dark matter", "neutron stars"],
    "mathematics": ["the Pythagorean theorem", "derivatives in calculus", "integration by parts", "prime factorization", "matrix multiplication",
                    "Bayes' theorem", "the normal distribution", "mathematical induction", "complex numbers", "logarithms",
                    "the binomial theorem", "linear regression", "eigenvalues and eigenvectors", "modular arithmetic", "Fourier series"],
    "computer science": ["recursion", "binary search", "hash tables", "Big-O notation", "the TCP/IP model", "public key cryptography",
                         "garbage collection", "database normalization", "dynamic programming", "virtual memory", "sorting algorithms",
                         "compilers and interpreters", "graph traversal with BFS and DFS", "neural networks", "operating system scheduling"],
    "economics": ["supply and demand", "inflation", "comparative advantage", "monetary policy", "elasticity of demand", "GDP",
                  "market failure and externalities", "opportunity cost", "the business cycle", "compound interest", "game theory",
                  "monopoly pricing", "fiscal policy"],
    "history": ["the causes of the First World War", "the Industrial Revolution", "the French Revolution", "the fall of the Roman Empire",
                "the Renaissance", "the Cold War", "the Silk Road", "the printing press", "the Meiji Restoration", "the Age of Exploration",
                "the Protestant Reformation", "ancient Egyptian civilization", "the Mongol Empire", "the abolition of slavery in the British Empire"],
    "psychology": ["classical conditioning", "cognitive dissonance", "Maslow's hierarchy of needs", "working memory", "confirmation bias",
                   "the bystander effect", "attachment theory", "operant conditioning", "the placebo effect", "growth mindset"],
    "philosophy": ["Plato's allegory of the cave", "utilitarianism", "Kant's categorical imperative", "the trolley problem", "existentialism",
                   "the mind-body problem", "Stoicism", "the scientific method", "Occam's razor", "social contract theory"],
    "medicine": ["how vaccines work", "blood pressure regulation", "type 2 diabetes", "how anesthesia works", "the lymphatic system",
                 "how the kidneys filter blood", "the stages of sleep", "how pain signals travel", "the digestive system", "cholesterol"],
    "engineering": ["how a bridge carries load", "the internal combustion engine", "how an electric motor works", "how solar panels work",
                    "how a refrigerator works", "how GPS works", "how a jet engine works", "feedback control systems", "how transistors work",
                    "how batteries store energy"],
    "linguistics": ["how languages change over time", "phonemes", "the origins of the English language", "syntax trees", "language acquisition in children",
                    "dialects and accents", "writing systems", "loanwords"],
    "law and civics": ["the separation of powers", "how a bill becomes law", "contract law basics", "intellectual property", "the jury system",
                       "human rights treaties", "how elections are counted"],
}

FORMS = ["poem", "sonnet", "haiku", "short story", "limerick", "persuasive essay", "news article", "dialogue between two characters",
         "fable with a moral", "song with two verses and a chorus", "diary entry", "letter"]
WRITE_TOPICS = ["the ocean at night", "a lost umbrella", "the first day of spring", "a robot learning to paint", "an old lighthouse",
                "friendship", "a city in the rain", "a forgotten library", "climate change", "a mountain village", "time travel",
                "a cat who rules the house", "the last tree on earth", "a bakery at dawn", "a childhood memory", "the moon landing",
                "a journey across a desert", "an unexpected letter", "a snowstorm", "a garden in autumn", "the internet",
                "a dragon who is afraid of fire", "a grandmother's recipe", "the sound of trains", "a new school", "a shipwreck",
                "the stars", "a busy market", "a broken clock", "courage", "a river", "a musician on the street"]

PAIRS = [("mitosis", "meiosis"), ("weather", "climate"), ("a virus", "a bacterium"), ("capitalism", "socialism"), ("TCP", "UDP"),
         ("Python", "Java"), ("stocks", "bonds"), ("nuclear fission", "nuclear fusion"), ("speed", "velocity"), ("RAM", "ROM"),
         ("democracy", "republic"), ("an alligator", "a crocodile"), ("DNA", "RNA"), ("renewable", "non-renewable energy"),
         ("the Roman Republic", "the Roman Empire"), ("baroque", "classical music"), ("SQL", "NoSQL databases"), ("a comet", "an asteroid"),
         ("aerobic", "anaerobic respiration"), ("inflation", "deflation"), ("impressionism", "expressionism"), ("a simile", "a metaphor"),
         ("plant cells", "animal cells"), ("AC", "DC current"), ("Keynesian", "classical economics"), ("a tsunami", "a tidal wave"),
         ("an operating system", "an application"), ("machine learning", "traditional programming"), ("lions", "tigers"),
         ("Greek", "Roman mythology"), ("fiction", "non-fiction"), ("HTTP", "HTTPS"), ("arteries", "veins"), ("Plato", "Aristotle"),
         ("a solar eclipse", "a lunar eclipse"), ("compiled", "interpreted languages"), ("an ionic bond", "a covalent bond"),
         ("a recession", "a depression"), ("Buddhism", "Stoicism as ways of life"), ("deductive", "inductive reasoning"),
         ("a hurricane", "a tornado"), ("the House of Representatives", "the Senate"), ("monarchy", "oligarchy"), ("a lake", "a sea"),
         ("vitamins", "minerals"), ("GDP", "GNP"), ("a sonnet", "a haiku"), ("the Arctic", "the Antarctic"), ("an atom", "an ion"),
         ("a bacterium", "a fungus"), ("hardware", "software"), ("a calorie", "a kilocalorie"), ("a latitude", "a longitude"),
         ("a neuron", "a glial cell"), ("a star", "a planet"), ("an epidemic", "a pandemic"), ("bits", "bytes"), ("wind", "solar power"),
         ("civil law", "common law"), ("the Iliad", "the Odyssey"), ("a hypothesis", "a theory"), ("an LLC", "a corporation"),
         ("pathos", "logos"), ("an octave", "a scale"), ("acids", "bases"), ("mass", "weight"), ("a debit", "a credit"),
         ("a tariff", "a quota"), ("Mars", "Venus"), ("a volcano", "a geyser"), ("an enzyme", "a hormone"), ("prose", "poetry"),
         ("an array", "a linked list"), ("a stack", "a queue"), ("a process", "a thread"), ("encryption", "hashing"),
         ("an exothermic", "an endothermic reaction"), ("a median", "a mean"), ("correlation", "causation"), ("a dialect", "a language"),
         ("a county", "a state"), ("an idiom", "a proverb"), ("a mammal", "a reptile"), ("a glacier", "an iceberg"),
         ("a violin", "a viola"), ("oil painting", "watercolor"), ("supply-side", "demand-side policies"), ("a fable", "a myth")]

GUIDES = ["writing a research paper", "starting a vegetable garden", "learning to play the guitar", "building a personal budget",
          "training for a marathon", "setting up a home network", "writing a business plan", "learning a new language",
          "baking bread from scratch", "preparing for a job interview", "starting a podcast", "building a website",
          "organizing a wedding", "studying for final exams", "changing a car tire", "painting a room", "investing in index funds",
          "writing a novel", "starting a small business", "learning to swim as an adult", "composting at home", "planning a trip abroad",
          "training a puppy", "public speaking", "making a short film", "learning to code in Python", "building a bookshelf",
          "brewing coffee by hand", "reducing household waste", "meditating", "writing a cover letter", "negotiating a salary",
          "caring for houseplants", "making sushi", "setting up a home workout routine", "learning to draw", "filing taxes",
          "moving to a new city", "hosting a dinner party", "learning chess", "knitting a scarf", "doing a science fair project",
          "repairing a bicycle puncture", "making a budget spreadsheet", "writing a speech", "creating a study schedule",
          "raising chickens", "photographing the night sky", "making candles", "writing a song", "restoring old furniture",
          "keeping bees", "making cheese at home", "planning a road trip", "starting a book club", "learning to juggle",
          "building a birdhouse", "growing tomatoes", "preparing for a hurricane", "running a meeting", "cleaning a laptop",
          "making pasta by hand", "setting up a freshwater aquarium", "writing a grant proposal", "learning calligraphy",
          "installing a ceiling fan", "creating a mobile app", "brewing kombucha", "starting a running habit", "decluttering a home",
          "making a stop-motion video", "learning sign language", "sewing a button", "building a campfire safely",
          "planning a vegetable-based diet", "teaching a child to ride a bike", "making a family tree", "pitching a startup"]

# Word problems for chain-of-thought elicitation, from a handful of shapes over generated numbers.
REASON_SHAPES = [  # (shape, numbers in a plausible range)
    ("A shop sells pencils at {a} cents each and notebooks at {b} cents each. How much do {c} pencils and {d} notebooks cost?",
     lambda r: dict(a=r.randint(15, 60), b=r.randint(90, 350), c=r.randint(2, 12), d=r.randint(2, 6))),
    ("A train travels {a} km in {b} hours. At the same speed, how far does it travel in {c} hours?",
     lambda r: dict(a=r.randint(12, 60) * 10, b=r.randint(2, 6), c=r.randint(3, 9))),
    ("A tank holds {a} liters. It is filled at {b} liters per minute and drains at {c} liters per minute. How long until it is full?",
     lambda r: dict(a=r.randint(10, 90) * 10, b=r.randint(8, 25), c=r.randint(2, 7))),
    ("If {a} workers build a wall in {b} days, how many days would {c} workers need, working at the same rate?",
     lambda r: dict(a=r.randint(2, 12), b=r.randint(3, 20), c=r.randint(2, 15))),
    ("A price of {a} dollars rises by {b} percent and then falls by {c} percent. What is the final price?",
     lambda r: dict(a=r.randint(20, 500), b=r.randint(5, 40), c=r.randint(5, 40))),
    ("The sum of two numbers is {a} and their difference is {b}. What are the numbers?",
     lambda r: (lambda x, y: dict(a=x + y, b=x - y))(r.randint(20, 99), r.randint(1, 19))),
    ("A rectangle has a perimeter of {a} cm and a length of {b} cm. What is its area?",
     lambda r: (lambda l, w: dict(a=2 * (l + w), b=l))(r.randint(8, 40), r.randint(2, 7))),
    ("A recipe needs {b} eggs for {a} people. How many eggs are needed for {c} people?",
     lambda r: dict(a=r.choice([2, 4, 6]), b=r.randint(2, 6), c=r.randint(8, 30))),
    ("Anna is {a} years old and her father is {b} years older than three times her age. How old will her father be in {c} years?",
     lambda r: dict(a=r.randint(6, 14), b=r.randint(1, 9), c=r.randint(2, 15))),
    ("A bag has {a} red balls and {b} blue balls. If you draw {c} balls without replacement, what is the probability they are all red?",
     lambda r: dict(a=r.randint(3, 9), b=r.randint(3, 9), c=r.randint(2, 3))),
]


def word_problems(rng, n):
    out, seen = [], set()
    while len(out) < n:
        shape, numbers = REASON_SHAPES[len(out) % len(REASON_SHAPES)]
        p = shape.format(**numbers(rng))
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def generate():
    rng = random.Random(SEED)
    per = {k: [] for k in TEMPLATES}
    for domain, xs in CONCEPTS.items():
        for x in xs:
            per["explain"].append((domain, TEMPLATES["explain"].format(x=x)))
            per["facts"].append((domain, TEMPLATES["facts"].format(x=x)))
    combos = [(f, t) for f in FORMS for t in WRITE_TOPICS]
    rng.shuffle(combos)
    for f, t in combos[:360]:
        per["write"].append(("creative", TEMPLATES["write"].format(form=f, x=t)))
    for a, b in PAIRS:
        per["compare"].append(("compare", TEMPLATES["compare"].format(a=a, b=b)))
    for g in GUIDES:
        per["guide"].append(("how-to", TEMPLATES["guide"].format(x=g)))
    for p in word_problems(rng, 180):
        per["reason"].append(("math", TEMPLATES["reason"].format(x=p)))
    rows = []
    while any(per.values()):
        for k in TEMPLATES:
            if per[k]:
                topic, prompt = per[k].pop(0)
                rows.append({"prompt": prompt, "category": "crawl-" + k, "template": k, "topic": topic})
    return rows


def render(rows):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def check():
    errors = []
    with open(OUT, "rb") as f:
        data = f.read()
    if data != render(generate()).encode("utf-8"):
        errors.append("templated_crawler.jsonl differs from what make_templated_crawler.py writes: run it")
    rows = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    norm = lambda s: " ".join(s.lower().split())
    c = Counter(norm(r["prompt"]) for r in rows)
    dups = [p for p, n in c.items() if n > 1]
    if dups:
        errors.append(f"{len(dups)} repeated prompts, e.g. {dups[0]!r}")
    long = [r["prompt"] for r in rows if len(r["prompt"].encode()) > 600]
    if long:
        errors.append(f"{len(long)} prompts over 600 bytes")
    if len(rows) < 1000:
        errors.append(f"only {len(rows)} prompts (at least 1,000 wanted)")
    shipped = set()
    for name in ("train.jsonl", "heldout.jsonl"):
        with open(os.path.join(HERE, "..", "prompts", name), encoding="utf-8") as f:
            shipped |= {norm(json.loads(line)["prompt"]) for line in f}
    overlap = sum(norm(r["prompt"]) in shipped for r in rows)
    if overlap:
        errors.append(f"{overlap} prompts are also in data/prompts")
    s = {"sha256": hashlib.sha256(data).hexdigest(), "prompts": len(rows), "distinct": len(c),
         "per_template": dict(Counter(r["template"] for r in rows)), "topics": len({r["topic"] for r in rows}),
         "max_bytes": max(len(r["prompt"].encode()) for r in rows), "overlap_with_shipped_prompts": overlap}
    return errors, s


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="verify templated_crawler.jsonl and print statistics")
    if ap.parse_args().check:
        errors, s = check()
        print(json.dumps(s, indent=1))
        for e in errors:
            print("ERROR:", e, file=sys.stderr)
        print("check:", "FAILED" if errors else "ok", file=sys.stderr)
        return 1 if errors else 0
    rows = generate()
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(render(rows))
    print(f"wrote {OUT}: {len(rows)} prompts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
