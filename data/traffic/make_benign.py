#!/usr/bin/env python3
"""Writes data/traffic/benign.jsonl: about two hours of benign API traffic to `retort serve`, written by the
retort team as the negative class for evaluating a crawl monitor (issue 16).

    python3 data/traffic/make_benign.py            # (re)write benign.jsonl next to this script
    python3 data/traffic/make_benign.py --check    # verify the file is what this script writes; print statistics

Stdlib only, no model calls, fixed seed: the same script always writes the same bytes.

Every message text below was written by hand for retort. To get several hundred conversation openers out of
a few thousand lines of text, a pool entry may hold alternatives that are picked at random:
    "{a|b|c}"   one of a, b, c (may nest; "{|x}" is "x" or nothing)
    "{@name}"   one entry of the list `name` in the same pool (itself expanded)
    "{#lo-hi}"  an integer in [lo, hi]
Users differ in topics, habits of writing (prefixes, lowercase, no question mark), client settings (system
prompt, max_tokens, temperature) and when they are active. See README.md for the schema and the counts.
"""
import argparse
import hashlib
import json
import os
import random
import re
import sys
from collections import Counter, defaultdict

SEED = 20261203
SPAN_S = 7200.0  # the traffic covers two hours
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "benign.jsonl")

# ---- the expansion mini-language ------------------------------------------------------------------------

_BRACE = re.compile(r"\{([^{}]*)\}")


def expand(text, rng, pool=None):
    """Expands {a|b}, {@list} and {#lo-hi} from the innermost braces outwards. Code snippets in the pools
    never contain braces that should stay literal except through the placeholders \x01 and \x02."""
    for _ in range(200):
        m = _BRACE.search(text)
        if m is None:
            break
        body = m.group(1)
        if body.startswith("@"):
            rep = rng.choice(pool[body[1:]])
        elif body.startswith("#") and re.fullmatch(r"#\d+-\d+", body):
            lo, hi = body[1:].split("-")
            rep = str(rng.randint(int(lo), int(hi)))
        else:
            rep = rng.choice(body.split("|"))
        text = text[: m.start()] + rep + text[m.end():]
    return text.replace("\x01", "{").replace("\x02", "}")


def lit(code):
    """Code with literal braces, protected from expand()."""
    return code.replace("{", "\x01").replace("}", "\x02")


# ---- chat topics ---------------------------------------------------------------------------------------------
# "open": conversation openers. An opener is a string, or (string, follow-ups) where the follow-ups fit that
# opener ("@name" names a list of the topic). "follow": follow-ups that fit any opener of the topic.

CHAT = {}

CHAT["cooking"] = {
    "ing": ["chicken thighs", "a block of tofu", "half a cabbage", "leftover rice", "two sweet potatoes",
            "a can of chickpeas", "ground beef", "some spinach that needs using up", "eggs", "a bag of frozen peas",
            "salmon fillets", "mushrooms", "a tin of coconut milk", "some feta", "lentils", "pork chops",
            "a few sad carrots", "leftover roast chicken", "a zucchini", "canned tuna"],
    "dish": ["lasagna", "chili", "risotto", "a stir fry", "shepherd's pie", "pad thai", "carbonara", "a curry",
             "tacos", "minestrone", "fried rice", "a quiche", "meatballs", "paella", "french onion soup", "dal"],
    "swap": ["buttermilk", "heavy cream", "fish sauce", "an egg", "sour cream", "white wine", "shallots",
             "fresh basil", "soy sauce", "parmesan", "breadcrumbs", "cornstarch", "mirin", "brown sugar"],
    "recipe": ["Can I make it the day before?", "What would you serve on the side?", "How do I make it vegetarian?",
               "I don't have an oven, can I do it on the stove?", "How many people does that feed?",
               "How would I scale that up for {8|12} people?", "Is there a way to make it less spicy?", "What wine or drink goes with that?",
               "How long does it keep in the fridge?", "Can you turn that into a shopping list?",
               "What if I don't have {garlic|onions|a blender|a food processor}?", "Can I use frozen vegetables instead?"],
    "open": [
        ("I have {@ing} and {@ing} in the fridge. What can I make for dinner {tonight |}that takes under {30|40} minutes?", "@recipe"),
        ("What's a good substitute for {@swap} in {@dish}?", ["Will it change the taste much?", "How much of it do I use?", "What if I don't have that either?"]),
        ("Can you give me a simple recipe for {@dish}? I'm {not a very experienced cook|cooking for two|on a tight budget}.", "@recipe"),
        ("How long should I {roast|bake} {a whole chicken|chicken breasts|salmon|pork tenderloin|a 2 kg beef roast} and at what temperature?",
         ["How do I know when it's done?", "Should I cover it?", "What temperature is that in Fahrenheit?", "How long should it rest?"]),
        ("I'm hosting {4|6|8|10} people for {a birthday dinner|a casual Sunday lunch|a game night}, and one of them is {vegan|gluten free|lactose intolerant|vegetarian}. Can you suggest a menu that works for everyone?",
         ["What can I prepare the day before?", "Can you give me a timeline for the day?", "What about dessert?", "Can you turn that into a shopping list?"]),
        ("How do I keep {fresh herbs|avocados|cut onions|bread|berries|cooked rice} from going bad so fast?", ["Can I freeze it?", "How long does it last that way?"]),
        ("Is it safe to {freeze|reheat} {cooked rice|soup with cream in it|cooked pasta|leftover fish|mashed potatoes}?", ["How long can it stay in the fridge first?", "What's the best way to reheat it?", "How many times can I do that?"]),
        ("Why does my {@dish} always turn out {bland|watery|too salty|mushy}?", ["How do I fix it if it's already cooked?", "Is it the pan I'm using?", "What spices would you add?"]),
        ("What spices go well with {@ing}?", ["Can you give me a quick recipe using them?", "What if I only have salt, pepper and paprika?"]),
        ("I want to meal prep lunches for the week, {around 500 calories each|high in protein|without a microwave at work}. Any ideas?", "@recipe"),
        "What's the difference between {baking soda and baking powder|stock and broth|a braise and a stew|light and dark soy sauce|olive oil and extra virgin olive oil} when cooking?",
        ("My {kids|partner|roommate} won't eat {vegetables|fish|beans}. How can I sneak {them|it} into {@dish}?", ["What if they notice?", "Any other dishes that work for that?"]),
        ("How do I {properly season a cast iron pan|sharpen a kitchen knife|cook rice without a rice cooker|poach an egg|caramelize onions}?", ["What am I doing wrong if it doesn't work?", "How often should I do that?"]),
        ("Can I make {@dish} in a slow cooker? How would I adapt it?", "@recipe"),
        ("what's a quick breakfast I can make with {oats|eggs and toast|yogurt|bananas} that isn't boring", ["Can I make it the night before?", "Something without sugar?"]),
    ],
    "follow": ["Can you put that as a numbered list?", "What would you do?"],
}

CHAT["baking"] = {
    "bake": ["sourdough", "banana bread", "focaccia", "chocolate chip cookies", "a sponge cake", "brownies",
             "cinnamon rolls", "pizza dough", "scones", "croissants", "a cheesecake", "muffins", "bagels", "pie crust"],
    "open": [
        ("My {@bake} always comes out {dense|gummy in the middle|too flat|dry|burnt on the bottom}. What am I doing wrong?", ["Could it be my oven?", "Should I weigh the flour instead of using cups?", "I'll try that. Anything else?"]),
        ("Can you convert this recipe from cups to grams? {2 cups flour, 1 cup sugar, 1/2 cup butter|3 cups flour, 1 1/2 cups milk, 1/4 cup oil|1 cup oats, 3/4 cup brown sugar, 1 cup flour}", ["What about the oven temperature, 350F?", "And half the recipe?"]),
        "How do I know when {@bake} {is done|has proofed enough}?",
        ("I want to bake {@bake} but I only have {whole wheat flour|gluten free flour|self-raising flour}. Will it work?", ["Do I need to change the amount of liquid?", "Will it rise as much?"]),
        ("What's the best way to {start a sourdough starter|keep a sourdough starter alive while I'm on holiday|get a crispier crust on bread|make cookies chewy instead of crispy}?", ["How long does that take?", "What if it smells strange?"]),
        "Why did my {@bake} {sink in the middle|crack on top|not rise at all}?",
        "Can I reduce the sugar in {@bake} without ruining it?",
        ("What's an easy {@bake} recipe for a complete beginner?", ["Can I freeze the dough?", "Can I do it without a stand mixer?", "How would I make it vegan?", "How long can I store them?"]),
        "Can you explain what {blind baking|tempering chocolate|laminating dough|the windowpane test|creaming butter and sugar} means?",
        "i'm making {@bake} for a bake sale tomorrow, how many batches do i need for about {40|60|80} servings",
    ],
    "follow": ["What temperature is that in Fahrenheit?", "Should I use salted or unsalted butter?", "What about at high altitude?"],
}

CHAT["travel"] = {
    "city": ["Lisbon", "Kyoto", "Mexico City", "Edinburgh", "Vienna", "Hanoi", "Montreal", "Barcelona", "Seoul",
             "Cape Town", "Prague", "Buenos Aires", "Copenhagen", "Istanbul", "Marrakech", "Melbourne", "Krakow",
             "Vancouver", "Porto", "Budapest"],
    "trip": ["What about if it rains?", "Can you make that a bit more relaxed, we don't like rushing?", "How much should I budget per day?",
             "Any day trips from there?", "Which of those would you skip if short on time?", "Can you put it in a table?",
             "What about for vegetarians?", "What's the best way to get around?"],
    "open": [
        ("I'm going to {@city} for {3|4|5|7} days in {March|May|October|December}. Can you suggest an itinerary?", "@trip"),
        ("What should I pack for a {week|long weekend} in {@city} in {winter|summer}?", ["Do I need an adapter?", "Is it a dressy city or casual?"]),
        ("Is it better to take the train or fly from {@city} to {@city}?", ["What about by bus?", "How early should I book?"]),
        ("What are some {cheap|free|kid friendly|less touristy} things to do in {@city}?", "@trip"),
        ("Do I need to tip in {Japan|France|the US|Germany|Thailand|Brazil}? How much?", ["What about taxis?", "And in hotels?"]),
        ("I'm traveling with {a toddler|my elderly parents|a dog|a wheelchair user} to {@city}. What should I plan for?", ["What about the flight?", "Any hotels you'd look for?"]),
        "What are common tourist scams in {@city} and how do I avoid them?",
        "How do I {deal with jet lag|avoid getting sick on a long flight|pack light with only a carry on|find cheap flights}?",
        ("what's the local food i have to try in {@city}", ["Where would I find it?", "Anything vegetarian?", "What should I avoid?"]),
        ("I have a {6|8|10} hour layover in {@city}. Is it worth leaving the airport?", ["What would you do with the time?", "How long does immigration take?"]),
        ("We're planning a road trip {along the coast of Portugal|through the Scottish Highlands|around Iceland|through the national parks in Utah} for {a week|ten days}. How should we split the days?", "@trip"),
        ("What's the best neighborhood to stay in {@city} for {a first time visitor|nightlife|a quiet stay|families}?", ["Is it safe to walk around at night?", "How far is it from the center?"]),
    ],
    "follow": ["Is that expensive?", "Thanks! What's the best time of year to go?"],
}

CHAT["homework_math"] = {
    "solve": ["Why does that step work?", "Can you give me a similar problem to practice?", "Can you check my answer? I got {12|7|-3|0.5}.",
              "Is there a faster way?", "I still don't get the second step.", "What if the number was negative?"],
    "open": [
        ("Can you help me solve {#2-9}x + {#1-20} = {#21-80}? I need to show the steps.", "@solve"),
        ("I don't understand how to {factor quadratics|find the derivative of x^2 sin(x)|use the quadratic formula|simplify fractions with variables|solve systems of equations by substitution|calculate standard deviation}. Can you explain it simply?", "@solve"),
        ("My {son|daughter|little brother} is in {4th|5th|6th|7th} grade and stuck on {long division|fractions|percentages|negative numbers|ratios}. How can I explain it to {him|her}?", ["Is there a game we could play to practice?", "What if {he|she} still doesn't get it?", "Can you give me a few practice problems?"]),
        ("What's the probability of rolling {two sixes|a sum of 7|at least one six} with two dice?", "@solve"),
        ("How do I find the area of a {circle with radius 7|triangle with base 10 and height 6|trapezoid with bases 8 and 12 and height 5}?", "@solve"),
        "Is {0.999 repeating really equal to 1|1/3 + 1/3 + 1/3 really equal to 1|the square root of 2 really irrational}? Why?",
        ("A train leaves at {2|3|4} pm going {60|80|90} km/h and another leaves an hour later going {100|110|120} km/h. When does the second one catch up?", "@solve"),
        ("can someone explain what a {logarithm|limit|vector|matrix|function|proof by induction} actually is, my textbook makes no sense", ["Can you give me an example with real numbers?", "Where is that used in real life?"]),
        "What's the difference between {mean, median and mode|permutations and combinations|a sequence and a series|sine and cosine}?",
        ("How do I calculate {compound interest|percentage increase|the slope of a line through two points|the volume of a cylinder}?", "@solve"),
        ("I got {x = 4|x = -2|y = 3x + 1} on this problem but the answer key says something different: {solve 3(x - 2) = 2x + 2|solve x^2 + 4x + 4 = 0|find the line through (0,1) and (2,5)}. Where did I go wrong?", "@solve"),
    ],
    "follow": ["Can you explain it like I'm 12?", "Can you give me an example with real numbers?"],
}

CHAT["homework_science"] = {
    "exp": ["how caffeine affects heart rate", "whether music helps plants grow", "which brand of battery lasts longest",
            "how the angle of a ramp changes a car's speed", "whether cold water freezes faster than hot water"],
    "open": [
        "Can you explain {photosynthesis|cellular respiration|mitosis vs meiosis|the water cycle|plate tectonics|how vaccines train the immune system|natural selection|the greenhouse effect} for a {high school|middle school} test?",
        "What's the difference between {an atom and a molecule|speed and velocity|weather and climate|a virus and a bacterium|mass and weight|DNA and RNA}?",
        "Why does {ice float on water|salt melt ice on roads|a metal spoon feel colder than a wooden one|the moon have phases|a balloon stick to the wall after rubbing it on hair}?",
        ("I need to balance this equation for chemistry: {H2 + O2 -> H2O|CH4 + O2 -> CO2 + H2O|Fe + O2 -> Fe2O3|Na + Cl2 -> NaCl}. How do I do it?", ["Can you give me another one to try?", "How do I know which one to start with?"]),
        ("How do I calculate {the force needed to accelerate a 10 kg box at 2 m/s^2|the density of an object with mass 50 g and volume 20 cm^3|how long it takes a ball to fall 20 meters|the current through a 6 ohm resistor at 12 volts}?", ["What are the units?", "Can you give me a similar problem to practice?"]),
        ("I have a science fair project on {plant growth under different light colors|which paper towel absorbs most|how temperature affects dissolving sugar|homemade batteries from lemons}. How should I set up the experiment?", ["What should my control group be?", "How many times should I repeat it?", "How do I present the results on a poster?"]),
        "what are the {parts of a cell|layers of the earth|planets in order|states of matter} and what does each one do",
        ("Can you help me write a hypothesis for an experiment about {@exp}?", ["What would the variables be?", "Can you make it one sentence?"]),
        ("Why is the {sky blue|ocean salty|sun so hot|moon sometimes visible during the day}? My {kid|nephew} asked and I didn't know.", ["How would I explain that to a 6 year old?", "Is there a simple experiment we could do at home?"]),
    ],
    "follow": ["Can you make it simpler?", "How would I remember that for the test?", "Can you make three quiz questions about it?",
               "What's a good diagram I could draw for this?", "Why does that happen though?"],
}

CHAT["homework_history"] = {
    "open": [
        "Can you summarize the causes of {the French Revolution|World War I|the fall of the Western Roman Empire|the Industrial Revolution|the American Revolution} for an essay?",
        ("I need to write {a paragraph|500 words|a short essay} about {the printing press|the Silk Road|ancient Egypt's pyramids|the Renaissance|the moon landing|the Black Death}. Where should I start?", ["What's a good thesis statement for that?", "How should I structure it?", "Can you give me an opening sentence?"]),
        "What was daily life like for {a medieval peasant|a Roman soldier|a Viking|a factory worker in 1850s England|a sailor in the 1700s}?",
        "Who was {Ada Lovelace|Marie Curie|Mansa Musa|Galileo|Hypatia|Nikola Tesla} and why are they important?",
        "Can you make me a timeline of {the space race|the Tudor dynasty|the Roman Republic|the Age of Exploration}?",
        "why did the {Titanic sink|Hindenburg crash|Library of Alexandria disappear|Aztec empire fall}? we talked about it in class",
        "How did people {tell time|preserve food|navigate at sea|make paper} before modern technology?",
    ],
    "follow": ["What kind of sources could I look for?", "What were the consequences?", "Can you make it shorter?",
               "How do historians know that?", "Can you turn that into bullet points for my notes?"],
}

CHAT["writing"] = {
    "draft": ["Can you make it shorter?", "Can you make it a bit more formal?", "Less formal please.", "Can you give me two other versions?",
              "Can you make it sound less like a robot wrote it?", "That's good, can you end it more warmly?"],
    "open": [
        ("Can you help me write an email to my {landlord about a leak under the sink|manager about taking Friday off|kid's teacher about missing homework|neighbor about their dog barking at night}? I want it to be polite but firm.", "@draft"),
        ("Can you proofread this for me? \"{Their going to announce the results tomorrow, so we should of prepared more.|Me and my team has finished the report and we look forward to here your feedback.|I would like to apply for the position, I have 5 years experience and I am very motivate.|Thank you for you're help last week, it really made a diference.}\"", ["Can you explain what was wrong?", "Is there a more natural way to say it?"]),
        ("I'm writing a {cover letter|personal statement|LinkedIn summary} for a {junior accountant|nursing|marketing assistant|barista|software testing} position. Can you help me start it?", "@draft"),
        ("How do I make this sentence sound more professional? \"{We messed up the order and we're sorry.|Can you send me the stuff by Monday?|I don't really have time for this meeting.|Your idea is kind of bad.}\"", ["Can you give me a version that's a bit warmer?", "Why is that better?"]),
        ("I need a {short speech|toast} for my {sister's wedding|dad's retirement party|best friend's 30th birthday|grandma's 90th}. Can you help me draft something {funny but sweet|heartfelt|short}?", "@draft"),
        ("What's the difference between {affect and effect|who and whom|fewer and less|i.e. and e.g.|lay and lie}?", ["Can you give me an example sentence for each?", "Is there a trick to remember it?"]),
        ("Can you suggest a title for my {blog post|short story|essay} about {learning to cook at 40|a lighthouse keeper who finds a message in a bottle|why I switched careers|moving to a new country}?", ["Can you give me a few more, a bit funnier?", "Something shorter?"]),
        ("Help me write a {thank you note to a coworker|condolence message to a neighbor|reference request to an old professor|complaint letter to my insurance company}.", "@draft"),
        ("I'm writing a short story where {a girl discovers her grandmother was a spy|a robot learns to garden|two strangers get stuck in an elevator|a town loses all its color overnight}. Can you help me with the opening paragraph?", ["Can you make it more mysterious?", "What could happen next?", "Can you write it in first person?"]),
        ("how do i make my writing less wordy? my {teacher|boss} keeps saying it", ["Can you show me a before and after example?", "Are there words I should just cut?"]),
    ],
    "follow": ["Thanks, that's really helpful."],
}

CHAT["health"] = {
    "open": [
        "How much water should an adult drink in a day? I {work outside|exercise a lot|always forget to drink}.",
        ("What are good ways to {fall asleep faster|stop waking up at 3am|deal with afternoon tiredness|reduce screen time before bed}?", ["How long does that usually take to help?", "Can you give me a simple evening routine?"]),
        ("Is it normal to get {headaches|sore muscles|dizzy} after {starting a new workout|skipping my morning coffee|standing up quickly}? When should I see a doctor?", ["What can I do in the meantime?", "How long does it usually last?"]),
        "What's the difference between {a cold and the flu|ibuprofen and paracetamol|a sprain and a strain|allergies and a cold}?",
        ("What foods are high in {iron|vitamin D|fiber|protein|magnesium} for someone who {doesn't eat meat|is trying to eat healthier|is pregnant}?", ["Can you give me a simple daily meal plan with those?", "Should I take a supplement instead?"]),
        ("My doctor said my {blood pressure|cholesterol|blood sugar} is a bit high. What lifestyle changes usually help? (I'll follow up with her of course)", ["What should I ask my doctor about it?", "How fast do those changes usually work?"]),
        "How do I {treat a minor burn|clean a small cut|know if a sprained ankle needs an x-ray|get rid of hiccups}?",
        "what does {BMI|a resting heart rate of 55|LDL cholesterol|a vitamin D level of 20 ng/mL} mean",
        ("Any tips for {managing stress at work|building a habit of walking daily|sitting less at a desk job|cutting down on sugar}?", ["Can you give me a simple daily plan?", "What if I slip up?"]),
    ],
    "follow": ["Is that backed by research?", "Thanks, that's reassuring."],
}

CHAT["finance"] = {
    "open": [
        ("How do I make a monthly budget? I earn about {$2,800|$3,500|$4,200|€2,400} after tax and I {rent|have a car loan|have student loans}.", ["Can you put that in a table?", "What if my income changes every month?", "Which app or spreadsheet would you use?"]),
        "What's the difference between {a Roth IRA and a traditional IRA|an index fund and an ETF|a credit card and a debit card|stocks and bonds|fixed and variable rate mortgages}?",
        ("Should I pay off my {credit card|student loan|car loan} first or save for an emergency fund?", ["What if the interest rate is only 3%?", "What would you do first?"]),
        "How much should I have in an emergency fund if my expenses are about {$1,900|$2,500|$3,200} a month?",
        "Can you explain how {compound interest|a credit score|inflation|a 401k match|capital gains tax} works in simple terms?",
        ("I'm {22|27|35|48} and have never invested. Where do I even start?", ["What are the risks?", "How much should I put in each month?", "How does that work in Europe?"]),
        "What are some ways to save money on {groceries|utilities|my phone bill|car insurance|a wedding}?",
        ("is it worth {buying a house or keeping renting|leasing a car|getting a cash back credit card|refinancing my mortgage} right now, what should i think about", ["What are the risks?", "What questions should I ask the bank?"]),
        ("How do I split rent fairly with a roommate when {one room is bigger|one of us earns more|one of us works from home}?", ["What about utilities?", "How do we bring it up without it being awkward?"]),
    ],
    "follow": ["Can you show me an example with numbers?"],
}

CHAT["gardening"] = {
    "plant": ["tomatoes", "basil", "a fiddle leaf fig", "roses", "lavender", "peppers", "strawberries", "a monstera",
              "hydrangeas", "zucchini", "a snake plant", "blueberries", "an orchid", "garlic", "cucumbers", "mint"],
    "sick": ["How do I know if it's too late to save it?", "What fertilizer should I use?", "Should I repot it?", "Is it safe for pets?"],
    "open": [
        ("The leaves on my {@plant} are turning {yellow|brown at the edges|spotty|pale}. What's wrong with it?", "@sick"),
        ("When should I plant {@plant} if I live in {zone 6|the Pacific Northwest|the UK|a place with hot summers|Northern Germany}?", ["How far apart should I space them?", "Can I start them indoors?", "How long until I can harvest?"]),
        ("How often should I water {@plant} {in a pot|indoors|in summer|in a raised bed}?", ["How do I tell if I'm overwatering?", "What about over winter?"]),
        ("What can I grow on a {small balcony that gets afternoon sun|shady patio|north facing windowsill}?", ["Which of those is easiest?", "What size pots do I need?"]),
        "How do I get rid of {aphids|slugs|fungus gnats|powdery mildew|spider mites} without harsh chemicals?",
        "Can I plant {@plant} next to {@plant}?",
        ("How do I start composting in a {small apartment|backyard|garden with lots of leaves}?", ["Will it smell?", "How long until I can use it?"]),
        ("my {@plant} is growing really leggy, should i prune it? how", "@sick"),
        ("What's a low maintenance plant for someone who {travels a lot|always kills plants|has cats|has a dark office}?", ["Is it safe for pets?", "How big does it get?"]),
    ],
    "follow": ["Thanks! Anything else I should know?"],
}

CHAT["fitness"] = {
    "plan": ["How many sets and reps?", "Can you make it shorter, I only have 20 minutes?", "What if I miss a day?",
             "Can you make a version without jumping?", "How do I know if I'm overtraining?"],
    "open": [
        ("Can you make me a {3|4} day a week workout plan for {building strength|losing fat|running my first 5k|getting back in shape after a baby}? I have {no equipment|dumbbells at home|a gym membership}.", "@plan"),
        ("How do I do a proper {squat|deadlift|push up|plank|pull up}? I think my form is off.", ["What muscles should I feel it in?", "What's an easier version to start with?"]),
        "Is it better to do cardio before or after weights?",
        ("I'm {30|45|60} and my {knees|lower back|shoulders} hurt when I {run|lift|do yoga}. What can I do instead?", ["Should I see a physio?", "Can you give me a short routine?"]),
        ("How much protein do I need if I weigh {60|72|85|95} kg and work out {3|5} times a week?", ["What does that look like in actual meals?", "Do I need protein powder?"]),
        "What's a good stretching routine for {after running|desk workers|before bed|tight hips}?",
        ("how do i stay motivated to work out when i'm {tired after work|busy with kids|bored of the gym}", ["What if I miss a week?", "Is it better to work out in the morning?"]),
        ("I want to run a {half marathon|10k} in {12|16} weeks. I can currently run about {3|5|8} km. Is that realistic?", "@plan"),
    ],
    "follow": ["What should I eat before?"],
}

CHAT["pets"] = {
    "pet": ["puppy", "old dog", "rescue cat", "kitten", "rabbit", "hamster", "parrot", "beagle", "border collie"],
    "train": ["How long does training usually take?", "What if that doesn't work?", "Are there toys that help?", "When should I ask a vet or trainer?"],
    "open": [
        ("My {@pet} {keeps chewing the furniture|won't stop barking at the door|scratches the couch|is scared of the vacuum}. What can I do?", "@train"),
        ("How do I {crate train a puppy|introduce a new cat to my old cat|trim my dog's nails|get my cat to use a scratching post|teach my dog to walk on a loose leash}?", "@train"),
        ("What human foods are dangerous for {dogs|cats|rabbits|parrots}?", ["What should I do if she already ate some?", "What treats are safe?"]),
        ("We're thinking of getting a {@pet}. What should we know before we do?", ["How much does it cost per month?", "Is it good with kids?"]),
        "How often should I {walk|feed|groom|bathe} {a husky|a senior cat|a labrador|a long haired cat}?",
        ("is it normal for my {@pet} to {sleep all day|drink a lot of water|sneeze sometimes|eat grass}", ["When should I take it to the vet?", "What signs should I watch for?"]),
        "What should I pack for a {road trip|flight|week at a sitter's} with my {@pet}?",
    ],
    "follow": ["Thanks, that's helpful!"],
}

CHAT["diy"] = {
    "fix": ["Do I need to turn off the water first?", "What tools do I need?", "How long will it take?",
            "When should I call a professional instead?", "Is that safe to do myself?"],
    "open": [
        ("How do I fix a {leaky faucet|running toilet|squeaky door|sticking drawer|hole in drywall|wobbly table leg}?", "@fix"),
        ("What do I need to {paint a room|hang a heavy mirror|install a shelf on plaster walls|replace a light switch|regrout my shower}? I've never done it before.", "@fix"),
        ("There's {mold on my bathroom ceiling|condensation on my windows every morning|a draft coming under the front door|a weird smell from the kitchen drain}. How do I fix it?", ["Do I need to tell my landlord?", "How do I stop it coming back?"]),
        "Can I {use regular screws in drywall|paint over wallpaper|put laminate over tiles|use indoor paint outside}?",
        ("How do I {unclog a drain without chemicals|get rid of scuff marks on walls|remove a stripped screw|reset a tripped breaker|bleed a radiator}?", "@fix"),
        "what's the difference between {a drill and an impact driver|latex and oil paint|caulk and grout|MDF and plywood}",
    ],
    "follow": ["Thanks, that's clear."],
}

CHAT["parenting"] = {
    "kid": ["What if she just ignores it?", "How long until that usually works?", "What should I avoid saying?", "What if it happens at someone else's house?"],
    "open": [
        ("My {3|4|5} year old {refuses to go to bed|has tantrums every morning|won't eat dinner|is scared of the dark|hits her brother}. Any tips?", "@kid"),
        ("What are some {rainy day activities|educational games|cheap birthday party ideas|screen free activities} for a {6|7|8|10} year old?", ["Anything that needs no supplies?", "What about for a group of 8 kids?"]),
        ("How do I talk to my {teenager|9 year old} about {social media|money|a death in the family|moving to a new school}?", ["What should I avoid saying?", "What if they don't want to talk?"]),
        "How much screen time is reasonable for a {2|5|11} year old?",
        "Can you suggest {chores|books|healthy snacks} for a {5|8|12} year old?",
        ("how do i get my kid to read more, he's {8|10} and only wants to play video games", ["Any books about video games?", "Should I make it a rule?"]),
        ("We're {potty training|weaning off the pacifier|moving from a crib to a bed}. What worked for other parents?", ["Can you give me a sample schedule?", "How long does it usually take?"]),
    ],
    "follow": ["Thank you, I'll try that."],
}

CHAT["language"] = {
    "lang": ["Spanish", "French", "German", "Italian", "Japanese", "Portuguese", "Korean", "Dutch", "Mandarin"],
    "phr": ["How do you pronounce that?", "Is that formal or informal?", "Can you give me a few more examples?", "Can you quiz me on those?"],
    "open": [
        ("What's the best way to learn {@lang} as an adult if I have {15 minutes|half an hour|an hour} a day?", ["Which apps would you use?", "How long until I can have a basic conversation?"]),
        ("How do I say {\"where is the train station\"|\"I'm allergic to nuts\"|\"can I have the bill please\"|\"nice to meet you\"|\"I'm just looking, thanks\"} in {@lang}?", "@phr"),
        ("Can you explain when to use {ser vs estar|the subjunctive in Spanish|passé composé vs imparfait|der, die, das|wa vs ga in Japanese|por vs para}?", ["Can you give me a few more examples?", "What's a common mistake with that?", "Can you quiz me on it?"]),
        ("Can you correct my {Spanish? \"Yo soy cansado porque trabajé mucho ayer.\"|French? \"Je suis allé au magasin et j'ai acheté des pommes rouge.\"|German? \"Ich habe gestern in die Stadt gegangen.\"|Italian? \"Io sono andato al cinema con mio amici.\"}", ["Why is that wrong?", "Is there a rule I can remember?"]),
        ("Give me {10|15} common {@lang} phrases for {ordering food|a job interview|small talk|a doctor's visit}.", "@phr"),
        ("i keep forgetting vocabulary in {@lang}, how do i actually remember words", ["How many new words a day is realistic?", "Are flashcards worth it?"]),
    ],
    "follow": ["Thanks! That helps."],
}

CHAT["career"] = {
    "iv": ["Can you make that sound more confident?", "What if they ask a follow up question?", "How long should the answer be?", "Can you give me a version for a remote job?"],
    "open": [
        ("I have a job interview for a {project manager|data analyst|retail supervisor|junior developer|dental assistant|teaching assistant} position {tomorrow|next week}. What questions should I expect?", ["What should I ask them at the end?", "What salary should I ask for?", "What should I wear?"]),
        ("How do I answer \"{what's your biggest weakness|why do you want to leave your current job|where do you see yourself in five years|tell me about a time you failed}\" in an interview?", "@iv"),
        ("I want to switch from {teaching|retail|nursing|accounting|hospitality} to {UX design|data analysis|project management|software development}. Where should I start?", ["Do I need a degree for that?", "How long would that take realistically?", "How do I explain the switch in interviews?"]),
        ("How do I ask for a raise? I've been at my company {2|3|4} years and {took on a lot more work|trained two new hires|never had a raise}.", ["What if they say no?", "Should I do it by email or in person?", "How much should I ask for?"]),
        ("Can you help me improve this resume bullet? \"{Responsible for managing social media.|Helped customers with problems.|Did data entry and reports.|Worked on the website.}\"", ["Can you give me two more versions?", "What if I don't have numbers to add?"]),
        "how do i politely decline a job offer {after accepting it|that I applied for|from a friend's company}",
        ("My {coworker|manager} {takes credit for my work|micromanages everything|sends messages late at night}. How should I handle it?", ["What if it keeps happening?", "Should I talk to HR?"]),
    ],
    "follow": ["Thanks, that's useful."],
}

CHAT["tech"] = {
    "fix": ["I'm on Windows 11 if that matters.", "What about on a Mac?", "That didn't work, what else can I try?", "Will that delete anything?", "Can you explain the third step more?"],
    "open": [
        ("My {laptop|phone|old Windows PC|MacBook} is really slow. What can I do to speed it up?", "@fix"),
        ("How do I {back up my phone photos|set up two factor authentication|free up storage on my iPhone|connect my printer to wifi|move my files to a new computer}?", "@fix"),
        ("My wifi keeps {dropping|being slow in one room|disconnecting at night}. How do I fix it?", "@fix"),
        ("Should I buy {a laptop or a tablet|an iPhone or an Android|a mesh router|a 4K monitor} for {a student|my mom who just browses|photo editing|working from home}?", ["What's a reasonable budget?", "Anything I should avoid?"]),
        "What's the difference between {RAM and storage|an SSD and a hard drive|wifi 5 and wifi 6|a VPN and antivirus}?",
        ("i got an email saying my {account was locked|package is waiting|bank needs me to verify}, how do i know if it's a scam", ["I already clicked the link, what should I do?", "How do I report it?"]),
        "How do I make a {strong password I can remember|shared family calendar|spreadsheet that adds up columns|slideshow from my photos}?",
        ("My {laptop battery|phone} {drains really fast|gets hot when charging|won't charge past 80%}. Is something wrong?", "@fix"),
    ],
    "follow": ["Is that free?"],
}

CHAT["media"] = {
    "rec": ["Which one would you start with?", "Anything shorter?", "Are any of those good for a 12 year old?", "What about something more recent?",
            "Can you tell me a bit more about the second one without spoilers?"],
    "open": [
        ("Can you recommend {books|novels|podcasts|documentaries} like {The Martian|Pride and Prejudice|Sapiens|Gone Girl|The Hobbit|Project Hail Mary}?", "@rec"),
        ("I just finished {a fantasy series|a long thriller|my first audiobook} and loved it. What should I read next if I like {slow burn mysteries|found family stories|books set at sea|funny sci-fi}?", "@rec"),
        ("What are some good {movies|board games|shows} for {a family night with young kids|a date night|a group of 6 adults|a rainy weekend}?", "@rec"),
        ("What is an unreliable narrator? We're reading {a mystery novel|The Great Gatsby|a short story} in class and my teacher keeps using the term.", ["Can you give me another famous example?", "How do I write about it in an essay?"]),
        ("I want to start a book club. How do we pick books and run the first meeting?", ["Can you suggest five books for the first months?", "What questions could we discuss?"]),
        ("what are some classic {sci-fi|mystery|horror|romance} novels everyone should read", "@rec"),
    ],
    "follow": ["Thanks, I'll check those out."],
}

CHAT["car"] = {
    "fix": ["Is it safe to keep driving?", "How much does that usually cost to fix?", "Can I do it myself?", "What should I tell the mechanic?"],
    "open": [
        ("My car {makes a squealing noise when I brake|shakes at highway speed|won't start on cold mornings|has a check engine light on|smells like burning}. What could it be?", "@fix"),
        "How often should I {change the oil|rotate the tires|replace the wiper blades|check the tire pressure} on a {2015|2018|2021} {Honda Civic|Toyota Corolla|Ford Focus|VW Golf}?",
        ("Is it worth buying {a used electric car|an extended warranty|winter tires|a hybrid} if I drive about {8,000|15,000|25,000} km a year?", ["What would you do?", "What are the downsides?"]),
        ("How do I {jump start a car|change a flat tire|check my oil|clean foggy headlights}?", ["What if it doesn't work?", "What do I need to keep in the car for that?"]),
        ("what should i check before buying a used car from a private seller", ["What questions should I ask the seller?", "Is a mechanic inspection worth it?"]),
    ],
    "follow": ["Thanks!"],
}

# Follow-ups that read naturally after any answer; the driver sends them with the real history.
GENERIC_FOLLOW = [
    "Can you make it shorter?", "Thanks! Can you put that as a list?", "Give me an example.", "Can you explain that more simply?",
    "What do you mean by the second point?", "ok thanks", "Thank you, that helps a lot!", "Can you go into more detail on the first one?",
    "Are you sure about that?", "Can you summarize that in two sentences?", "Can you write that as steps?",
    "Can you say that again without the jargon?", "perfect thanks", "That makes sense.", "Could you explain that a bit more?",
]

# ---- coding help ------------------------------------------------------------------------------------------

# (language, snippet, error or symptom): each written to fail the way it says.
CODE_BUGS = [
    ("python", "def average(nums):\n    return sum(nums) / len(nums)\n\nprint(average([]))", "ZeroDivisionError: division by zero"),
    ("python", "data = {'a': 1, 'b': 2}\nfor k in data:\n    if data[k] == 1:\n        del data[k]", "RuntimeError: dictionary changed size during iteration"),
    ("python", "age = input('Age: ')\nif age > 18:\n    print('adult')", "TypeError: '>' not supported between instances of 'str' and 'int'"),
    ("python", "import pandas as pd\ndf = pd.read_csv('sales.csv')\nprint(df['Total'].sum())", "KeyError: 'Total'"),
    ("python", "items = [3, 1, 2]\nsorted_items = items.sort()\nprint(sorted_items[0])", "TypeError: 'NoneType' object is not subscriptable"),
    ("python", "def add_item(item, basket=[]):\n    basket.append(item)\n    return basket\n\nprint(add_item('apple'))\nprint(add_item('pear'))", "the second call prints ['apple', 'pear'] instead of ['pear']"),
    ("python", "with open('notes.txt') as f:\n    for line in f:\n        print(line)", "every line is printed with an empty line after it"),
    ("python", "import requests\nr = requests.get('https://example.com/api/items')\nprint(r.json()['items'][0]['name'])", "json.decoder.JSONDecodeError: Expecting value: line 1 column 1 (char 0)"),
    ("python", "numbers = ['10', '20', '30']\ntotal = 0\nfor n in numbers:\n    total += n", "TypeError: unsupported operand type(s) for +=: 'int' and 'str'"),
    ("python", "class Dog:\n    def __init__(self, name):\n        name = name\n\nd = Dog('Rex')\nprint(d.name)", "AttributeError: 'Dog' object has no attribute 'name'"),
    ("python", "x = 0.1 + 0.2\nif x == 0.3:\n    print('equal')\nelse:\n    print('not equal')", "it prints 'not equal' and I don't understand why"),
    ("python", "from datetime import datetime\nd = datetime.strptime('2024-03-05', '%d-%m-%Y')", "ValueError: time data '2024-03-05' does not match format '%d-%m-%Y'"),
    ("python", "import numpy as np\na = np.array([1, 2, 3])\nb = np.array([1, 2])\nprint(a + b)", "ValueError: operands could not be broadcast together with shapes (3,) (2,)"),
    ("python", "def count_words(text):\n    counts = {}\n    for w in text.split():\n        counts[w] += 1\n    return counts", "KeyError: 'the'"),
    ("python", "matrix = [[0] * 3] * 3\nmatrix[0][0] = 1\nprint(matrix)", "all three rows get the 1, not just the first"),
    ("javascript", "const nums = [10, 1, 5, 100];\nnums.sort();\nconsole.log(nums);", "it prints [1, 10, 100, 5]"),
    ("javascript", "async function load() {\n  const res = fetch('/api/user');\n  const data = await res.json();\n  console.log(data.name);\n}", "TypeError: res.json is not a function"),
    ("javascript", "for (var i = 0; i < 3; i++) {\n  setTimeout(() => console.log(i), 100);\n}", "it logs 3 three times instead of 0, 1, 2"),
    ("javascript", "const user = null;\nconsole.log(user.name);", "TypeError: Cannot read properties of null (reading 'name')"),
    ("javascript", "document.getElementById('btn').addEventListener('click', save());", "save runs once when the page loads and then never again when I click"),
    ("javascript", "if ('5' == 5) console.log('same');\nif ([] == false) console.log('also same?');", "both lines print and I don't get why"),
    ("typescript", "interface User { id: number; name: string }\nconst u: User = { id: '7', name: 'Ana' };", "Type 'string' is not assignable to type 'number'"),
    ("sql", "SELECT customer_id, COUNT(*)\nFROM orders\nWHERE COUNT(*) > 5\nGROUP BY customer_id;", "ERROR: aggregate functions are not allowed in WHERE"),
    ("sql", "SELECT name, email FROM users WHERE email = NULL;", "it returns no rows even though some emails are empty"),
    ("sql", "SELECT o.id, c.name\nFROM orders o\nJOIN customers c;", "syntax error at or near \";\""),
    ("sql", "SELECT department, name, MAX(salary)\nFROM employees\nGROUP BY department;", "column \"employees.name\" must appear in the GROUP BY clause or be used in an aggregate function"),
    ("bash", "for f in $(ls *.jpg); do\n  mv $f backup/$f\ndone", "it breaks on files that have spaces in the name"),
    ("bash", "#!/bin/bash\nif [ $1 == \"start\" ]; then\n  echo starting\nfi", "[: ==: unary operator expected (when I run it without an argument)"),
    ("bash", "count=0\ncat list.txt | while read line; do\n  count=$((count+1))\ndone\necho $count", "it always prints 0"),
    ("java", "String a = new String(\"hi\");\nString b = new String(\"hi\");\nif (a == b) System.out.println(\"equal\");", "it never prints equal"),
    ("java", "List<Integer> xs = new ArrayList<>(List.of(1, 2, 3));\nfor (Integer x : xs) {\n    if (x == 1) xs.remove(x);\n}", "java.util.ConcurrentModificationException"),
    ("c++", "std::vector<int> v;\nv.reserve(10);\nv[0] = 5;\nstd::cout << v.size();", "it prints 0, and sometimes crashes"),
    ("c", "char *name;\nscanf(\"%s\", name);\nprintf(\"Hello %s\\n\", name);", "Segmentation fault (core dumped)"),
    ("go", "var m map[string]int\nm[\"a\"] = 1", "panic: assignment to entry in nil map"),
    ("rust", "let s = String::from(\"hello\");\nlet t = s;\nprintln!(\"{}\", s);", "error[E0382]: borrow of moved value: `s`"),
    ("python", "import os\npath = 'C:\\new_folder\\test.txt'\nprint(os.path.exists(path))", "it prints False but the file is definitely there"),
    ("python", "total = 0\nfor i in range(1, 10):\n    total += i\nprint(total)  # should be 1+...+10", "it prints 45, I expected 55"),
    ("javascript", "const price = 0.1 * 3;\nconsole.log(price === 0.3);", "it logs false"),
]

HOWTO_TASKS = {
    "python": ["read a CSV file and skip the header", "remove duplicates from a list but keep the order", "sort a list of dictionaries by a key",
               "make an HTTP request with a timeout", "parse command line arguments", "read a JSON file into a dictionary",
               "run a function every 10 minutes", "merge two dictionaries", "rename all files in a folder",
               "measure how long a function takes", "write unit tests with pytest", "set up a virtual environment",
               "convert a string to a date", "send an email with an attachment", "flatten a nested list",
               "count how often each word appears in a text file", "download a file and show a progress bar"],
    "javascript": ["debounce a search input", "deep copy an object", "format a number as currency", "wait for several fetch calls to finish",
                   "get query parameters from the URL", "store something in localStorage", "remove an item from an array by value",
                   "add days to a date", "check if an object is empty", "read a file in Node.js"],
    "sql": ["find duplicate rows", "get the second highest salary", "count orders per month", "delete rows older than 30 days",
            "join three tables", "find customers who never ordered", "calculate a running total", "pivot rows into columns"],
    "bash": ["find all files larger than 100MB", "replace a word in every file in a folder", "loop over lines in a file",
             "check if a directory exists", "schedule a script with cron", "count lines in all .py files", "kill a process on port 8080"],
    "excel": ["look up a value from another sheet", "count cells that contain a certain word", "highlight duplicates",
              "split first and last names into two columns", "sum values that match two conditions"],
    "git": ["undo my last commit but keep the changes", "rename a branch", "remove a file from the repo but keep it locally",
            "resolve a merge conflict", "see what changed in the last commit", "squash my last three commits"],
}

WRITE_SPECS = [
    "checks if a string is a palindrome", "returns the n-th Fibonacci number", "validates an email address roughly",
    "converts Celsius to Fahrenheit", "finds the most common element in a list", "reverses the words in a sentence",
    "checks whether a year is a leap year", "groups a list of words by their first letter", "computes the median of a list",
    "turns a title into a URL slug", "returns the prime numbers up to n", "counts vowels in a string",
    "merges two sorted lists", "chunks a list into pieces of size n", "capitalizes the first letter of each word",
    "computes the GCD of two numbers", "checks if two strings are anagrams", "removes HTML tags from a string",
    "finds the longest word in a sentence", "converts seconds to hours, minutes and seconds",
]

CODE_CONCEPTS = {
    "python": ["a list and a tuple", "`is` and `==`", "a generator and a list comprehension", "`@staticmethod` and `@classmethod`",
               "`append` and `extend`", "threads and processes", "`deepcopy` and `copy`"],
    "javascript": ["`let`, `const` and `var`", "`==` and `===`", "promises and async/await", "`map` and `forEach`", "null and undefined"],
    "sql": ["INNER JOIN and LEFT JOIN", "WHERE and HAVING", "UNION and UNION ALL", "a primary key and a unique index"],
    "git": ["merge and rebase", "`git fetch` and `git pull`", "reset and revert"],
    "c++": ["a pointer and a reference", "`struct` and `class`", "the stack and the heap"],
}

EXPLAIN_SNIPPETS = [
    ("python", "squares = {x: x * x for x in range(5) if x % 2 == 0}"),
    ("python", "result = list(zip(*[iter(items)] * 3))"),
    ("python", "def memo(f):\n    cache = {}\n    def g(n):\n        if n not in cache:\n            cache[n] = f(n)\n        return cache[n]\n    return g"),
    ("javascript", "const total = cart.reduce((sum, item) => sum + item.price * item.qty, 0);"),
    ("javascript", "export default function useToggle(initial = false) {\n  const [on, setOn] = useState(initial);\n  return [on, () => setOn(v => !v)];\n}"),
    ("regex", "^[\\w.+-]+@[\\w-]+\\.[\\w.]+$"),
    ("regex", "^(\\d{3})-(\\d{3})-(\\d{4})$"),
    ("bash", "find . -name '*.log' -mtime +7 -exec rm {} \\;"),
    ("bash", "tar -czvf backup-$(date +%F).tar.gz ~/Documents"),
    ("sql", "SELECT name FROM employees e WHERE salary > (SELECT AVG(salary) FROM employees WHERE department = e.department);"),
    ("python", "with ThreadPoolExecutor(max_workers=4) as ex:\n    results = list(ex.map(fetch, urls))"),
    ("c", "while (*dst++ = *src++);"),
]

CODE_OPEN = {
    "bug": [
        "I'm getting this error and I don't understand why:\n\n{err}\n\n```{lang}\n{code}\n```",
        "why does this {fail|crash|not work}? {err}\n\n```{lang}\n{code}\n```",
        "Can you help me debug this {lang} code? The problem: {err}\n\n{code}",
        "```{lang}\n{code}\n```\n\n{err} -- what am I doing wrong?",
        "Beginner here. My {lang} code gives \"{err}\". Code:\n\n```\n{code}\n```\n\nThanks!",
    ],
    "howto": ["How do I {task} in {lang}?", "what's the {best|cleanest|simplest} way to {task} in {lang}", "{lang}: how to {task}?",
              "In {lang}, how would I {task}? {I'm new to it.|I've seen a few ways online and I'm confused.|}"],
    "write": ["Write a {lang} function that {spec}.", "Can you write me a {lang} function that {spec}? {With comments please.|Keep it simple.|No libraries.|}",
              "I need a small {lang} function that {spec}, for a {school assignment|script at work|side project}."],
    "concept": ["What's the difference between {a} in {lang}?", "In {lang}, when should I use {a}?"],
    "explain": ["What does this {lang} do?\n\n```\n{code}\n```", "Can you explain this line by line?\n\n```{lang}\n{code}\n```",
                "I found this in our codebase and don't get it: `{code1}`"],
}

CODE_GENERIC_FOLLOW = ["ok thanks", "Thanks, that worked!", "Could you explain that a bit more?", "perfect, thanks",
                       "Can you explain that more simply? I'm still learning."]
CODE_FOLLOW = {  # by the kind of opener
    "bug": ["It still gives me the same error.", "Why does that fix it?", "ok that worked! but why did it work before on my other machine?",
            "Now I get a different error: {IndexError: list index out of range|TypeError: undefined is not a function|permission denied|syntax error at end of input}",
            "Can you explain the fix line by line?", "Is there a way to catch this kind of bug earlier?", "Can you add comments?",
            "thanks, that fixed it. is there a cleaner way to write the whole thing?"],
    "howto": ["Can you do it without any libraries?", "What about in {JavaScript|Python|Go|TypeScript|Java} instead?", "Can you add comments?",
              "ok that worked, thanks! how would I also handle errors?", "How would I write a test for this?", "does this work on windows too?",
              "What does the second line do?"],
    "write": ["What's the time complexity?", "How would I write a test for this?", "What about in {JavaScript|Python|Go|TypeScript|Java} instead?",
              "Can you make it handle empty input?", "Can you make it more readable?", "Is there a more efficient way?",
              "Can you do it without a loop?", "Can you add comments?"],
    "concept": ["Can you show me a code example?", "Which one is faster?", "When would I use the first one?", "Is it the same in other languages?",
                "Give me an example where picking the wrong one causes a bug."],
    "explain": ["Why would someone write it like that?", "Can you rewrite it so it's easier to read?", "What would the output be for a small example?",
                "Is there anything wrong with it?", "Can you explain the first line again?"],
}

# ---- one-off short questions ------------------------------------------------------------------------------

SHORT = [
    "how many {cups are in a liter|ounces in a pound|teaspoons in a tablespoon|feet in a mile|ml in a cup|grams in an ounce}",
    "what's {#5-25}% of {#40-900}", "what is {#12-99} times {#12-99}", "{#60-110} fahrenheit in celsius?", "convert {#3-42} miles to km",
    "What time is it in {Tokyo|London|Sydney|New York|Dubai|São Paulo} when it's {9am|noon|6pm|midnight} in {Chicago|Berlin|Delhi|Los Angeles}?",
    "What does \"{ubiquitous|ephemeral|pragmatic|serendipity|sonder|ineffable|quixotic|laconic|petrichor|juxtapose|hubris|nostalgia|gaslighting|schadenfreude|zeitgeist|cognitive dissonance|opportunity cost|deadweight loss|placebo|hygge}\" mean?",
    "another word for {happy|tired|important|good|big|said|interesting|difficult|beautiful|fast|angry|smart}",
    "Is it \"{affect|effect}\" or \"{effect|affect}\" in: \"{The weather will ___ our plans.|The new rule had a big ___ on sales.|How does sleep ___ memory?}\"",
    "how do you spell {necessary|accommodate|definitely|occasionally|rhythm|separate|conscientious|millennium|embarrass|bureaucracy}",
    "What's the capital of {Australia|Canada|Brazil|Turkey|Nigeria|New Zealand|Switzerland|Vietnam|Morocco|Peru|Kazakhstan|Norway}?",
    "how tall is {the Eiffel Tower|Mount Everest|the Statue of Liberty|Big Ben|the Burj Khalifa|an average giraffe}",
    "how long {does it take to boil an egg|should I let a steak rest|does it take light from the sun to reach earth|do cats live|does a passport renewal usually take|should a nap be}",
    "What's a {tip|15% tip|20% tip} on ${#18-140}.{#10-99}?",
    "how do I {take a screenshot on a Mac|split the screen on Windows|turn off autocorrect on my iPhone|clear my browser cache|find my wifi password on Windows|mute a group chat on WhatsApp|print double sided}",
    "Who {wrote Frankenstein|painted the Mona Lisa|invented the telephone|discovered penicillin|composed the Four Seasons|was the first person in space|built the first airplane that flew}?",
    "why do {cats purr|onions make you cry|we yawn|leaves change color in fall|our ears pop on planes|we get goosebumps|bread go stale|popcorn pop}",
    "is a {tomato|peanut|strawberry|cucumber|coconut|pumpkin} a fruit or a vegetable",
    "How many {bones are in the human body|days are in a leap year|players are on a soccer team|time zones does Russia have|keys are on a piano|hearts does an octopus have}?",
    "What year did {the Berlin Wall fall|World War II end|the first iPhone come out|humans land on the moon|the Titanic sink}?",
    "best way to {remove a coffee stain from a white shirt|get rid of fruit flies|clean a microwave|unshrink a wool sweater|remove sticker residue|clean white sneakers}?",
    "Give me a {good name for a golden retriever|name for a book club|name for a fantasy football team|name for a small bakery|team name for a trivia night}",
    "what rhymes with {orange|silver|purple|month|lemon|window}",
    "what's the plural of {cactus|octopus|moose|fish|mongoose|crisis|syllabus}",
    "Is {#1901-2099} a leap year?",
    "Translate \"{good morning|thank you very much|see you tomorrow|where is the bathroom|how much does it cost}\" to {Spanish|French|Italian|German|Portuguese}",
    "summarize the plot of {Hamlet|Romeo and Juliet|The Great Gatsby|Moby Dick|1984|Macbeth|Pride and Prejudice} in {two|three} sentences",
    "quick: is it {its or it's|your or you're|then or than} in \"{___ going to rain|the dog wagged ___ tail|more ___ ten people came|___ welcome}\"",
    "How {far is the moon from Earth|hot is the surface of the sun|deep is the Mariana Trench|old is the universe|fast does sound travel}?",
    "what should I name a {spreadsheet tracking my spending|folder of tax documents|playlist for running|wifi network}, something funny",
    "can you {freeze milk|microwave aluminum foil|eat raw oats|reuse cooking oil|compost citrus peels|put a cast iron pan in the dishwasher}?",
    "What's the difference between {a crocodile and an alligator|a hurricane and a typhoon|weather and climate|a lake and a pond|baking and roasting|a rabbit and a hare|an emu and an ostrich}?",
    "{#2-9}/{#10-20} as a percentage", "what's {#2-12} squared plus {#2-12} squared",
    "how many {weeks|days|hours} until {Christmas|new year|July 4th} if today is {March 3|October 12|June 20|August 30}",
    "Recommend one {book|movie|podcast|album} for a {long flight|rainy Sunday|road trip|sleepless night}.",
]

# One-off questions written out whole, the way people type them into a search box or a chat.
SHORT_ONEOFF = [
    "is it rude to leave a group chat", "how long do eggs last in the fridge", "what's the difference between a latte and a flat white",
    "Can dogs eat grapes?", "why is my cat sneezing so much", "how many calories does walking 10,000 steps burn",
    "what do you call a group of crows", "Is Pluto a planet or not?", "how to say no to extra work without sounding lazy",
    "What's a good gift for a coworker who's leaving, under $30?", "how much does a blue whale weigh", "can you get sunburned through a window",
    "Why do my glasses fog up when I wear a mask?", "what's the longest word in english", "do I need a visa for canada with a uk passport",
    "how do airplanes stay in the air", "What is the speed of light in km per second?", "is it bad to charge my phone overnight",
    "how many hours of sleep does a teenager need", "what's the healthiest kind of bread", "How do I get wax out of a tablecloth?",
    "what does APR stand for", "why is the dead sea called that", "Is it safe to eat the skin of a kiwi?",
    "how long should i steep green tea", "What temperature should a fridge be at?", "why do people clink glasses",
    "how do you pronounce quinoa", "what's the best way to learn touch typing", "Is it OK to water plants at night?",
    "how many teaspoons of sugar in a can of coke", "what's a fun fact about octopuses", "Why do we have leap years?",
    "when is the best time to see the northern lights", "how do noise cancelling headphones work",
    "what's the difference between a cv and a resume", "Can you recommend a word game to play in the car with kids?",
    "how long can cooked chicken stay out", "How do I tell if an egg is still good?", "why do bananas turn brown",
    "what's the opposite of 'optimistic'", "what is a haiku", "Is 37.8 a fever?", "how much caffeine is in a shot of espresso",
    "who invented the sandwich", "what does RSVP mean on an invitation", "why do cats knock things off tables",
    "How many languages are spoken in India?", "Does cracking your knuckles cause arthritis?", "how do I politely end a phone call",
    "is it 'all of a sudden' or 'all of the sudden'", "What's the difference between a hurricane watch and a warning?",
    "why do we dream", "how hot does a car get inside in summer", "what's the etiquette for tipping a hairdresser",
    "how many ml is a shot glass", "What's the best way to wake up early without feeling terrible?",
    "can you put olive oil on a cast iron pan", "what country has the most islands", "Why is the ocean blue?",
    "how long should a cover letter be", "is it normal for a new tattoo to peel", "what's the capital of scotland",
    "How long does it take to walk a mile?", "what happens if you swallow gum", "best way to keep a bike from getting stolen",
    "How do I cancel a subscription on an iPhone?", "what is the 50/30/20 rule", "why do onions taste sweet when cooked",
    "what time does the sun set in june in london roughly", "how old do you have to be to donate blood",
    "What is a good houseplant for low light?", "do fish sleep", "how to get rid of a stuffy nose fast",
    "What is the rule for using a semicolon?", "whats the difference between a duvet and a comforter",
    "how much should I feed a 10 week old kitten", "Why do some people sneeze when they look at the sun?",
    "what does 'per se' mean", "how do you make cold brew coffee", "is it cheaper to run the dishwasher or wash by hand",
    "what's a polite way to ask someone to repeat themselves", "how many stars are on the US flag",
    "Can I use baking soda instead of baking powder?", "what does a notary do", "Why does my voice sound weird on recordings?",
    "how to remember names better", "what's the tallest mountain in europe", "Is a hot dog a sandwich?",
    "how long is the great wall of china", "what's the difference between 'every day' and 'everyday'",
    "do you need to wash rice before cooking it", "what do I do if my laptop gets water on it", "How far can a kangaroo jump?",
    "why are flamingos pink", "How do I unfreeze a frozen pipe?", "what's a quick warm up before a run",
    "how do I politely remind someone they owe me money", "what's the most spoken language in the world",
    "Is it better to rent or buy a piano for a beginner?", "how long do you boil corn on the cob",
    "why does my phone say 'no sim'", "What's a good name for a sourdough starter?", "how many moons does mars have",
    "can i bring a power bank on a plane", "what's the difference between an llc and a sole proprietorship",
    "how do bees make honey", "Why do I get a headache when I'm hungry?", "how many grams of protein in an egg",
    "what's the best way to store batteries", "Is it weird to bring my own snacks to a movie theater?",
    "how do you calculate gpa", "why do we get hiccups", "what's the fastest land animal",
    "How long should I wait to swim after eating?", "how much water does a cactus need", "what's a mocktail I can make with ginger ale",
    "is it safe to drink tap water in portugal", "how do you fold a fitted sheet", "why is yawning contagious",
    "what does 'bcc' mean in an email", "How do I stop my glasses from sliding down my nose?", "is honey ok for babies",
    "what does a red sky at night mean", "how long to microwave a potato", "What's the difference between a comet and an asteroid?",
]
SHORT_FOLLOW = ["thanks!", "Are you sure?", "ok thanks", "Can you say that in one sentence?", "got it, thanks",
                "Really? I didn't know that.", "Can you explain a bit more?", "Is that always true?", "cool, thanks"]

LOGPROB_QUIZ = [  # a quiz app that reads the answer letter's probability
    ("Which planet is closest to the sun?", ["Venus", "Mercury", "Mars", "Earth"]),
    ("What gas do plants take in for photosynthesis?", ["Oxygen", "Nitrogen", "Carbon dioxide", "Hydrogen"]),
    ("How many sides does a hexagon have?", ["Five", "Six", "Seven", "Eight"]),
    ("Which is the largest ocean?", ["Atlantic", "Indian", "Arctic", "Pacific"]),
    ("What is the boiling point of water at sea level in Celsius?", ["90", "100", "110", "120"]),
    ("Which animal is a mammal?", ["Shark", "Dolphin", "Trout", "Octopus"]),
    ("What is 7 x 8?", ["54", "56", "58", "64"]),
    ("Which language has the most native speakers?", ["English", "Spanish", "Mandarin Chinese", "Hindi"]),
    ("Who wrote Romeo and Juliet?", ["Charles Dickens", "William Shakespeare", "Jane Austen", "Mark Twain"]),
    ("What is the chemical symbol for gold?", ["Go", "Gd", "Au", "Ag"]),
    ("Which organ pumps blood around the body?", ["Lungs", "Liver", "Heart", "Kidneys"]),
    ("What is the freezing point of water in Fahrenheit?", ["0", "32", "100", "212"]),
    ("Which continent is Egypt in?", ["Asia", "Africa", "Europe", "South America"]),
    ("What is the square root of 81?", ["7", "8", "9", "10"]),
    ("Which is a prime number?", ["21", "27", "29", "33"]),
    ("What do bees make?", ["Milk", "Honey", "Silk", "Wax paper"]),
    ("Which is the longest river in Africa?", ["Congo", "Niger", "Nile", "Zambezi"]),
    ("How many minutes are in 3 hours?", ["120", "150", "180", "200"]),
    ("What shape has three sides?", ["Square", "Triangle", "Circle", "Pentagon"]),
    ("Which of these is a primary color?", ["Green", "Purple", "Blue", "Orange"]),
    ("What is the largest planet in the solar system?", ["Saturn", "Jupiter", "Neptune", "Earth"]),
    ("Which instrument has 88 keys?", ["Guitar", "Violin", "Piano", "Flute"]),
    ("What is H2O commonly called?", ["Salt", "Water", "Hydrogen peroxide", "Oxygen"]),
    ("What is 15% of 200?", ["15", "20", "30", "45"]),
    ("Which country is home to the kangaroo?", ["New Zealand", "South Africa", "Australia", "Argentina"]),
    ("Which month has 28 days in a common year?", ["January", "February", "April", "November"]),
    ("Who painted the Starry Night?", ["Claude Monet", "Vincent van Gogh", "Pablo Picasso", "Salvador Dalí"]),
    ("Which blood cells fight infection?", ["Red blood cells", "Platelets", "White blood cells", "Plasma"]),
    ("What is the main language of Brazil?", ["Spanish", "Portuguese", "French", "English"]),
    ("What unit is used to measure electrical resistance?", ["Volt", "Ampere", "Ohm", "Watt"]),
    ("Which is the smallest unit of life?", ["Atom", "Cell", "Organ", "Tissue"]),
    ("How many degrees are in a right angle?", ["45", "90", "180", "360"]),
    ("Which bird is known for mimicking speech?", ["Parrot", "Sparrow", "Pigeon", "Owl"]),
    ("What force keeps us on the ground?", ["Magnetism", "Friction", "Gravity", "Tension"]),
    ("Which of these is not a noble gas?", ["Helium", "Neon", "Nitrogen", "Argon"]),
    ("What is the capital of Japan?", ["Osaka", "Kyoto", "Tokyo", "Nagoya"]),
]

# A linguistics student looking at which words the model expects next (top_logprobs 20, a few tokens): a
# legitimate heavy logprob user.
CLOZE = [
    "The cat sat on the", "She opened the door and saw a", "It was raining, so we took an", "He poured the coffee into a",
    "After dinner, the children went to", "The capital of France is", "I can't believe you ate the whole", "My favourite season is",
    "The bank is closed on", "Please remember to lock the", "The doctor told him to stay in", "We watched the sun set over the",
    "Once upon a", "The train to London leaves at", "She plays the piano and the", "They bought a new house near the",
    "If it doesn't rain tomorrow, we will go to the", "He is the tallest boy in his", "I need to buy milk, bread and",
    "The meeting has been moved to", "Water boils at one hundred degrees", "The opposite of hot is", "A week has seven",
    "The bird built its nest in the", "She whispered something in his", "I left my keys on the kitchen", "The old man walked with a",
    "Can you pass me the salt and", "The film was so boring that I fell", "Every morning he reads the", "The students handed in their",
    "We ran out of", "The recipe calls for two cups of", "The baby finally fell", "At the end of the street there is a",
    "He apologised for being", "The museum is open from nine to", "Don't forget to water the", "The lights went out during the",
    "She is allergic to", "The price of petrol went", "The river flows into the", "He scored the winning", "The library is a quiet place to",
]
STEM_FORMS = ["Continue this text with one word: {s}", "Next word? \"{s}\"", "Complete: {s} ___"]

# ---- copywriting (n > 1: several drafts to pick from) -----------------------------------------------------

WRITING_OPEN = [
    "Write a short Instagram caption for {our new {pumpkin spice|lemon poppyseed|sourdough} loaf|a rainy day discount at our bakery|our shop's 5th birthday|the first strawberries of the season at our farm stand}. {Fun tone, one emoji max.|Warm and cozy.|Keep it under 20 words.}",
    "Give me a tagline for {a dog walking business|a small bookstore cafe|a bike repair shop|a local yoga studio|a handmade candle brand|a tutoring service for math}.",
    "Write a product description for {a hand-thrown ceramic mug|a wool beanie|a bamboo cutting board|a scented soy candle called \"Morning Fog\"|a kids' rain jacket with reflective strips} for our online shop, about {40|60|80} words.",
    "Write a subject line for our newsletter about {the spring sale|new opening hours|a recipe of the month|our volunteer day|a customer appreciation week}.",
    "Draft a friendly reply to a customer who {left a 2-star review because delivery was late|asked if we ship to Canada|wants to return a gift without a receipt|complimented our packaging}.",
    "Write a short bio for {a wedding photographer|a freelance translator|a home baker|a piano teacher|a personal trainer} to put on {Instagram|our website's about page}.",
    "Come up with a name for {a lavender lemonade|a new coffee blend|a cozy reading nook at our cafe|a kids' summer art camp|a limited edition blue candle}.",
    "Write a {short|two sentence} announcement that {our shop will be closed on Monday for inventory|we're hiring a part-time barista|our prices will go up slightly next month|we now take online orders}.",
]

WRITING_FOLLOW = ["Make them punchier.", "Less formal, please.", "Can you try one that mentions the neighborhood?",
                  "Shorter, please.", "I like the second one, can you give me variations of it?", "Can you make it sound less salesy?",
                  "Add a call to action at the end."]

# ---- batch user 1: review sentiment (fixed instruction, distinct reviews from hand-written fragments) ------

REVIEW_INSTRUCTION = ("Classify the sentiment of the following product review as positive, negative or neutral. "
                      "Answer with one word.\n\nReview: {review}\nSentiment:")

# group -> (products, positive sentences, negative sentences); every sentence fits every product of its group.
REVIEW_PRODUCTS = {
    "appliance": (["blender", "kettle", "toaster", "coffee grinder", "air fryer", "hand mixer", "rice cooker", "milk frother"],
                  ["Heats up fast and looks great on the counter.", "Easy to clean, the parts just rinse off.",
                   "Way quieter than my old one.", "Does exactly what it says, no complaints.", "Makes my mornings so much quicker.",
                   "Compact enough for our tiny kitchen.", "The controls are simple and clearly labeled."],
                  ["Stopped working after a month.", "Smells like burning plastic every time I use it.", "It's so loud my neighbours probably hear it.",
                   "The buttons are confusing and the manual is useless.", "The cord is way too short.", "Much smaller than it looks in the pictures.",
                   "It tripped the breaker twice in the first week."]),
    "cookware": (["frying pan", "knife set", "saucepan", "baking sheet", "dutch oven", "cutting board"],
                 ["Feels solid and well made for the price.", "Still looks new after months of daily use.", "Nothing sticks to it.",
                  "Heavy in a good way.", "Goes straight in the dishwasher and comes out fine."],
                 ["It warped the first time I used it on high heat.", "The handle got loose after two weeks.", "Started rusting almost right away.",
                  "Scratches if you even look at it.", "The coating started peeling off already."]),
    "audio": (["pair of wireless earbuds", "bluetooth speaker", "pair of headphones", "soundbar"],
              ["Sound quality is way better than I expected.", "Paired instantly with my phone.", "Battery lasts all day.",
               "Bass is punchy without being muddy.", "Comfortable even after a few hours."],
              ["Keeps disconnecting every few minutes.", "Audio is tinny and there's no bass at all.", "One side stopped working already.",
               "The app is buggy and kept crashing.", "There's a constant hiss at low volume."]),
    "charging": (["phone charger", "USB-C cable", "power bank", "wireless charging pad", "car charger"],
                 ["Charges my phone really quickly.", "Small enough to throw in my bag.", "Still working perfectly after months.",
                  "The braided cable feels very durable.", "Can charge two devices at once, which is handy."],
                 ["Stopped charging after three weeks.", "Gets really hot while charging, which worries me.", "Frayed near the connector within a month.",
                  "Charges slower than the one that came with my phone.", "Only works if I hold the cable at a certain angle."]),
    "clothing": (["rain jacket", "pair of jeans", "wool sweater", "t-shirt", "hoodie", "fleece", "pair of leggings", "dress"],
                 ["Fits true to size and the fabric is soft.", "Washed it several times and it still looks new.", "The color is exactly like the photo.",
                  "Warm without being bulky.", "Got compliments the first day I wore it.", "Nice deep pockets."],
                 ["Runs at least one size small.", "Shrank after the first wash even on cold.", "The seams started coming apart.",
                  "Color faded after a couple of washes.", "The material feels cheap and scratchy.", "The zipper broke within a week.",
                  "Pills like crazy after a few wears."]),
    "shoes": (["pair of running shoes", "pair of winter boots", "pair of sandals", "pair of sneakers", "pair of hiking boots", "pair of slippers"],
              ["Super comfortable right out of the box.", "Great grip, even on wet pavement.", "No break-in period needed.",
               "My feet stayed dry all day.", "Good arch support."],
              ["Gave me blisters on the first walk.", "The sole started separating after a month.", "They squeak on every step.",
               "Runs half a size big.", "The insole slides around."]),
    "furniture": (["office chair", "bookshelf", "desk", "bed frame", "side table", "shoe rack"],
                  ["Assembly was easy and all the parts were there.", "Looks more expensive than it was.", "Really sturdy once it's put together.",
                   "My back pain is better since I switched.", "Fit perfectly in the corner of our living room."],
                  ["One of the screws was missing and the holes didn't line up.", "Started wobbling after a few days.",
                   "The instructions were impossible to follow.", "Arrived with a big scratch on the top.", "The veneer is already chipping."]),
    "textiles": (["throw blanket", "bath towel set", "pillow", "duvet cover", "set of sheets"],
                 ["Really soft and cozy.", "Washes well and gets softer every time.", "Super absorbent.", "Keeps me cool at night.",
                  "The color is lovely and matches our bedroom."],
                 ["Sheds lint everywhere.", "It flattened out after one week.", "Thinner than I expected from the pictures.",
                  "The stitching came undone in the wash.", "Had a chemical smell that didn't wash out."]),
    "toys": (["building block set", "jigsaw puzzle", "board game", "plush bear", "toy car", "art kit"],
             ["My kids play with it every day.", "Kept the whole family entertained on game night.", "Our daughter hasn't put it down since her birthday.",
              "Sturdy enough to survive a toddler.", "Good quality for the price."],
             ["Pieces were missing from the box.", "Broke within an hour of play.", "Too hard for the age range on the box.",
              "The paint chipped off almost immediately.", "Much smaller than the picture suggests."]),
    "garden": (["garden hose", "pair of pruning shears", "raised bed kit", "watering can", "pair of garden gloves"],
               ["Works great in my backyard.", "Feels well built and should last years.", "Easy to use even for my arthritic hands.",
                "Exactly what I needed for the vegetable patch."],
               ["Rusted after a few weeks outside.", "The plastic cracked in the first frost.", "Leaks no matter what I do.",
                "Fell apart after one season."]),
    "lighting": (["desk lamp", "set of solar lights", "LED strip", "bedside lamp", "set of string lights"],
                 ["The light is warm and easy on the eyes.", "Bright enough to read by.", "Love that it's dimmable.", "Makes the room feel so cozy."],
                 ["Flickers constantly.", "Half the bulbs died within a week.", "Much dimmer than advertised.", "The remote stopped working."]),
}
REVIEW_ANY_POS = ["Arrived quickly and well packaged.", "Great value for money.", "Exactly as described.", "Better than the more expensive brands I've tried."]
REVIEW_ANY_NEG = ["Cheaply made.", "Not as described at all.", "Took three weeks to arrive.", "Overpriced for what you get."]

REVIEW_OPEN = ["Bought this {p} for my {mom|dad|husband|wife|son|daughter|roommate|office}.", "I've had this {p} for {two weeks|a month|three months|half a year|about a year} now.",
               "Ordered the {p} on a whim.", "This is my second {p} from this brand.", "Got the {p} on sale.", "Replaced my old {p} with this one.",
               "Honest review of the {p}:", "Needed a new {p} for {the holidays|our new apartment|work|a camping trip}.", "", "", ""]
REVIEW_NEUTRAL = ["It's okay.", "Does the job, nothing special.", "Works fine but I'm not blown away.", "About what you'd expect for the price.",
                  "Not bad, not great.", "Haven't used it enough yet to say much.", "Average.", "It arrived on time."]
REVIEW_CLOSE_POS = ["Would buy again!", "Highly recommend.", "Five stars from me.", "Already ordered one for my sister.", "Worth every penny.", "Love it."]
REVIEW_CLOSE_NEG = ["Returning it.", "Would not recommend.", "Save your money.", "Very disappointed.", "One star.", "Customer service never replied."]
REVIEW_CLOSE_MIX = ["Mixed feelings overall.", "Might keep it, might not.", "Three stars.", "Fine for the price I guess.", ""]

# ---- batch user 2: support-ticket field extraction (sent by a helpdesk cron job in bursts) ----------------

TICKET_INSTRUCTION = ("Extract these fields from the support ticket and answer with JSON only: order_number (string or null), "
                      "product (string or null), issue_type (one of: delivery, refund, damaged, account, billing, other), "
                      "urgency (low, medium or high).\n\nTicket:\n{ticket}")

TICKET_FIRST = ["Ana", "Marcus", "Priya", "Tom", "Lea", "Kofi", "Sofia", "Daniel", "Mei", "Jonas", "Fatima", "Liam", "Chiara", "Noah",
                "Aisha", "Pavel", "Grace", "Mateo", "Yuki", "Olivia", "Samir", "Emma", "Diego", "Hannah"]
TICKET_ITEMS = ["blue rain jacket (size M)", "coffee grinder", "set of 4 mugs", "wireless earbuds", "yoga mat", "desk lamp",
                "kids' backpack", "cast iron pan", "phone case", "wool blanket", "running shoes", "bluetooth speaker",
                "garden hose", "picture frame set", "electric toothbrush", "standing desk converter", "board game", "printer ink"]
TICKET_ISSUE = {
    "delivery": ["my order #{o} still hasn't arrived and it's been {#8-20} days", "the tracking for order {o} hasn't updated since {Monday|last week|the 3rd}",
                 "the courier says order #{o} was delivered but there's nothing at my door", "order {o} was sent to my old address even though I changed it"],
    "refund": ["I returned the {i} from order #{o} {two weeks|ten days|a month} ago and haven't seen the refund yet",
               "I'd like a refund for the {i} (order {o}), it's not what I expected", "you said the refund for order #{o} would take 5 days, it's been {#9-21}"],
    "damaged": ["the {i} in order #{o} arrived {cracked|broken|with a big dent|soaked}", "the box for order {o} was crushed and the {i} inside is damaged",
                "I opened order #{o} and the {i} has a {scratch|tear|missing part}"],
    "account": ["I can't log in to my account, the password reset email never comes", "please change the email on my account to the new one I'm writing from",
                "my account got locked after I typed the wrong password", "how do I delete my account and my data?"],
    "billing": ["I was charged twice for order #{o}", "the total on order {o} is higher than what the cart showed", "my discount code didn't apply to order #{o}",
                "I see a charge from you that I don't recognize"],
    "other": ["do you sell gift cards?", "can I change the color of the {i} in order #{o} before it ships?", "is the {i} coming back in stock?",
              "can you add a gift note to order {o}?"],
}
TICKET_URGENT = ["", "", "", "It's a birthday present for {Saturday|tomorrow|this weekend}.", "This is the third time I'm writing.",
                 "I need this sorted today please.", "No rush.", "Please help asap!", "I'm really frustrated."]
TICKET_HELLO = ["Hi,", "Hello,", "Hi there,", "Dear support,", "Hey,", "Good morning,", ""]
TICKET_BYE = ["Thanks, {n}", "Best, {n}", "{n}", "Thank you! {n}", "Regards, {n}", "Cheers"]

# ---- who the users are -------------------------------------------------------------------------------------

SYS_HELPFUL = "You are a helpful assistant."
CLIENTS = {  # what each user's app sends: (system prompt or None, params)
    "web": (SYS_HELPFUL, {"max_tokens": 400, "temperature": 0.7}),
    "mobile": (None, {"max_tokens": 300, "temperature": 0.8}),
    "sdk-default": (None, {"max_tokens": 256}),
    "notes": ("You are a concise assistant inside a note-taking app. Keep answers brief.",
              {"max_tokens": 200, "temperature": 0.5, "top_p": 0.9}),
    "family": ("You are a friendly assistant for a family. Keep explanations simple and kind.", {"max_tokens": 350, "temperature": 0.7}),
    "tutor": ("You are a patient tutor. Explain step by step and check that the student understands.", {"max_tokens": 400, "temperature": 0.3}),
    "confidence": (SYS_HELPFUL, {"max_tokens": 300, "temperature": 0.7}),
    "ide": ("You are a coding assistant. Answer with code first, then a short explanation.", {"max_tokens": 512, "temperature": 0.2}),
    "cli": (None, {"max_tokens": 400, "temperature": 0}),
    "code-web": ("You are a helpful programming assistant.", {"max_tokens": 450, "temperature": 0.5}),
    "code-confidence": (None, {"max_tokens": 400, "temperature": 0.2}),
    "short": (None, {"max_tokens": 128, "temperature": 0.7}),
    "short-plain": (None, {"max_tokens": 100}),
    "short-assistant": ("You are a voice assistant. Answer in one or two short sentences.", {"max_tokens": 80, "temperature": 0.6}),
    "copy": ("You write marketing copy for small local businesses.", {"max_tokens": 120, "temperature": 1.0, "n": 3}),
    "quiz": ("Answer with the letter of the correct option only.", {"max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": 4}),
    "reviews": (None, {"max_tokens": 2, "temperature": 0, "logprobs": True, "top_logprobs": 3}),
    "tickets": ("You extract structured data from customer support tickets. Reply with a single JSON object.",
                {"max_tokens": 120, "temperature": 0, "seed": 1234}),
    "research": (None, {"max_tokens": 3, "temperature": 0, "logprobs": True, "top_logprobs": 20}),
}

# Clients that add logprobs or ask for several choices now and then: (share of requests, extra params).
OCCASIONAL = {
    "confidence": (0.3, {"logprobs": True, "top_logprobs": 3}),  # an app that can shade words by confidence
    "code-confidence": (0.25, {"logprobs": True, "top_logprobs": 5}),
    "short-plain": (0.06, {"n": 2}),
    "notes": (0.05, {"logprobs": True, "top_logprobs": 1}),
}

# (topics, client, style) of the chat users; each concentrates on a few topics, the first most.
CHAT_USERS = [
    (["cooking", "baking", "health"], "web", "plain"), (["travel", "language", "media"], "mobile", "casual"),
    (["homework_math", "homework_science"], "tutor", "lower"), (["homework_history", "writing", "homework_math"], "tutor", "casual"),
    (["finance", "career"], "web", "polite"), (["gardening", "cooking", "diy"], "sdk-default", "plain"),
    (["fitness", "health", "cooking"], "mobile", "terse"), (["pets", "diy", "gardening"], "family", "polite"),
    (["parenting", "cooking", "health"], "family", "plain"), (["tech", "finance"], "confidence", "plain"),
    (["writing", "career"], "notes", "plain"), (["language", "travel"], "web", "lower"),
    (["car", "diy", "finance"], "sdk-default", "terse"), (["media", "writing"], "notes", "casual"),
    (["baking", "parenting"], "mobile", "polite"), (["homework_science", "homework_math", "media"], "web", "lower"),
    (["travel", "finance", "cooking"], "web", "plain"), (["parenting", "homework_math", "tech"], "family", "casual"),
    (["health", "fitness"], "notes", "terse"), (["gardening", "pets"], "mobile", "lower"),
    (["career", "tech", "writing"], "web", "polite"), (["cooking", "travel"], "sdk-default", "casual"),
    (["diy", "car", "tech"], "mobile", "terse"), (["language", "homework_history", "writing"], "confidence", "plain"),
]
CODING_USERS = [
    (["python"], "ide", "plain"), (["python", "sql"], "cli", "terse"), (["javascript", "typescript"], "ide", "casual"),
    (["python", "bash", "git"], "code-web", "plain"), (["java", "sql"], "code-web", "polite"), (["javascript", "sql"], "cli", "lower"),
    (["python", "excel"], "code-web", "polite"), (["c++", "c", "python"], "code-confidence", "plain"),
    (["go", "bash", "git"], "cli", "terse"), (["python", "javascript", "rust"], "ide", "casual"),
]
SHORT_USERS = [("short", "lower"), ("short", "plain"), ("short-plain", "terse"), ("short-assistant", "plain"), ("short", "casual"),
               ("short-plain", "lower"), ("short-assistant", "terse"), ("short", "polite"), ("short-plain", "plain"),
               ("short", "lower"), ("short-assistant", "casual"), ("short", "terse")]
N_WRITING_USERS = 3
N_REVIEWS = 760

PREFIX = {"polite": ["Hi! ", "Hello, ", "Hi, ", "Good morning! ", "Hello! "], "casual": ["ok so ", "hey ", "quick question: ", "so ", "hi! "],
          "plain": ["Question: ", "Hi, "], "lower": ["hey ", "ok "], "terse": []}
SUFFIX = {"polite": [" Thank you!", " Thanks in advance!", " Thank you so much.", " Thanks!"], "casual": [" thanks!", " ty", " :)", " thx"],
          "plain": [" Thanks.", " Please keep it short."], "lower": [" thanks", " pls"], "terse": []}


def styled(text, style, rng, first=True):
    """The user's habits of writing; code (anything with a newline or backtick) is left alone but for a prefix."""
    text = text.strip()
    has_code = "\n" in text or "`" in text
    if not has_code:
        text = re.sub(r" {2,}", " ", text)
    if first and PREFIX[style] and not text.startswith("`") and rng.random() < (0.45 if style in ("polite", "casual") else 0.15):
        text = rng.choice(PREFIX[style]) + (text[0].lower() + text[1:] if not text[:2].isupper() else text)
    if not has_code:
        if style == "lower" or (style == "casual" and rng.random() < 0.5):
            text = text.lower()
        if style == "terse" and text.count("?") == 1 and text.endswith("?"):
            text = re.sub(r"^(Can you|Could you) (\w)", lambda m: m.group(2).upper(), text)[:-1]
        elif style in ("lower", "casual") and text.endswith("?") and rng.random() < 0.6:
            text = text[:-1]
    thanked = re.search(r"thank|thx|\bty\b", text, re.I)
    if SUFFIX[style] and not thanked and rng.random() < (0.35 if style in ("polite", "casual") else 0.1) * (1 if first else 0.35):
        suffix = rng.choice(SUFFIX[style])
        if suffix[1].isupper() and text[-1] not in ".?!:)\"'`":
            text += "."
        text = text + suffix
    return text


def norm(text):
    return " ".join(text.lower().split())


def n_turns(rng, weights):
    return rng.choices(range(1, len(weights) + 1), weights=weights)[0]


class Author:
    """Draws distinct openers: rotates through a pool's templates before reusing one, and retries on a repeat."""

    def __init__(self, rng):
        self.rng = rng
        self.used = set()
        self.queues = {}

    def template(self, key, templates):
        q = self.queues.get(key)
        if not q:
            q = list(templates)
            self.rng.shuffle(q)
            self.queues[key] = q
        return q.pop()

    def unique(self, make):
        for _ in range(60):
            text = make()
            if norm(text) not in self.used:
                self.used.add(norm(text))
                return text
        return None


def chat_opener(author, topic, style, rng):
    """(opener, the follow-ups that fit it or None)."""
    pool = CHAT[topic]
    box = {}

    def make():
        entry = author.template(topic, pool["open"])
        tpl, fl = (entry, None) if isinstance(entry, str) else entry
        box["follow"] = pool[fl[1:]] if isinstance(fl, str) else fl
        return styled(expand(tpl, rng, pool), style, rng)

    return author.unique(make), box.get("follow")


def pick_followups(k, own, topic, style, rng, generic=None):
    """k distinct follow-ups: mostly those written for the opener, then the topic's, then generic ones."""
    pools = [[expand(f, rng) for f in x] for x in (own or [], topic or [], generic or GENERIC_FOLLOW)]
    for x in pools:
        rng.shuffle(x)
    out = []
    for _ in range(k):
        r = rng.random()
        order = [0, 1, 2] if r < 0.7 else ([1, 2, 0] if r < 0.8 else [2, 0, 1])
        src = next((pools[i] for i in order if pools[i]), None)
        if src is None:
            break
        out.append(styled(src.pop(), style, rng, first=False))
    return out


LANG_NAME = {"python": "Python", "javascript": "JavaScript", "typescript": "TypeScript", "sql": "SQL", "bash": "bash", "java": "Java",
             "c++": "C++", "c": "C", "go": "Go", "rust": "Rust", "excel": "Excel", "git": "git", "regex": "regex"}


def code_opener(author, langs, style, rng):
    """(opener, its kind: bug, howto, write, concept or explain)."""
    box = {}

    def make():
        kind = box["kind"] = rng.choices(["bug", "howto", "write", "concept", "explain"], weights=[35, 25, 20, 10, 10])[0]
        lang = rng.choice(langs)
        if kind == "bug":
            bugs = [b for b in CODE_BUGS if b[0] in langs] or CODE_BUGS
            l, code, err = rng.choice(bugs)
            t = author.template("bug", CODE_OPEN["bug"])
            t = t.replace("```{lang}", "```" + l).replace("{lang}", LANG_NAME[l])
            return styled(expand(t.replace("{err}", err).replace("{code}", lit(code)), rng), style, rng)
        if kind == "howto":
            langs_h = [x for x in langs if x in HOWTO_TASKS] or ["python"]
            l = rng.choice(langs_h)
            t = author.template("howto", CODE_OPEN["howto"])
            return styled(expand(t.replace("{lang}", LANG_NAME[l])
                                 .replace("{task}", rng.choice(HOWTO_TASKS[l])), rng), style, rng)
        if kind == "write" and lang not in ("sql", "excel", "git", "bash"):
            t = author.template("write", CODE_OPEN["write"])
            return styled(expand(t.replace("{lang}", LANG_NAME[lang]).replace("{spec}", rng.choice(WRITE_SPECS)), rng), style, rng)
        if kind == "concept" and lang in CODE_CONCEPTS:
            t = rng.choice(CODE_OPEN["concept"])
            a = rng.choice(CODE_CONCEPTS[lang])
            a = a if t.startswith("What") else a.replace(" and ", " or ")
            return styled(t.replace("{lang}", LANG_NAME[lang]).replace("{a}", a), style, rng)
        box["kind"] = "explain"
        ex = [e for e in EXPLAIN_SNIPPETS if e[0] in langs] or EXPLAIN_SNIPPETS
        l, code = rng.choice(ex)
        t = rng.choice(CODE_OPEN["explain"][:2] if "\n" in code else CODE_OPEN["explain"] + [CODE_OPEN["explain"][2]])
        t = t.replace("```{lang}", "```" + l).replace("{lang}", LANG_NAME[l] + ("" if l == "regex" else " code"))
        return styled(t.replace("{code1}", code).replace("{code}", code), style, rng)

    return author.unique(make), box.get("kind")


def make_review(rng):
    group = rng.choice(sorted(REVIEW_PRODUCTS))
    products, pos, neg = REVIEW_PRODUCTS[group]
    pos, neg = pos + REVIEW_ANY_POS, neg + REVIEW_ANY_NEG
    p = rng.choice(products)
    first = expand(rng.choice(REVIEW_OPEN).replace("{p}", p), rng)
    mood = rng.choices(["pos", "neg", "mixed", "neutral"], weights=[50, 30, 12, 8])[0]
    if mood == "pos":
        body = rng.sample(pos, rng.choice([1, 1, 2, 2, 3])) + ([rng.choice(REVIEW_CLOSE_POS)] if rng.random() < 0.6 else [])
    elif mood == "neg":
        body = rng.sample(neg, rng.choice([1, 1, 2, 2])) + ([rng.choice(REVIEW_CLOSE_NEG)] if rng.random() < 0.6 else [])
    elif mood == "mixed":
        body = [rng.choice(pos), rng.choice(["But", "However,", "On the other hand,", "Only problem:"]) + " " + rng.choice(neg).lower(),
                rng.choice(REVIEW_CLOSE_MIX)]
    else:
        body = [rng.choice(REVIEW_NEUTRAL)] + ([rng.choice(pos + neg)] if rng.random() < 0.3 else [])
    if not first:
        first = rng.choice(["The " + p + ":", "", "", ""])
    text = " ".join(x for x in [first] + body if x)
    if rng.random() < 0.12:
        text = text.lower()
    return text


def make_ticket(rng):
    kind = rng.choice(sorted(TICKET_ISSUE))
    o = rng.choice(["{#100000-999999}", "SO-{#10000-99999}", "{#1000000-9999999}"])
    issue = expand(rng.choice(TICKET_ISSUE[kind]).replace("{o}", o).replace("{i}", rng.choice(TICKET_ITEMS)), rng)
    issue = issue[0].upper() + issue[1:] + ("" if issue.endswith("?") else rng.choice([".", ".", "!", ""]))
    n = rng.choice(TICKET_FIRST)
    parts = [rng.choice(TICKET_HELLO), issue, expand(rng.choice(TICKET_URGENT), rng), rng.choice(TICKET_BYE).replace("{n}", n)]
    return "\n".join(x for x in parts if x)


# ---- when they send -----------------------------------------------------------------------------------------

def think_time(rng, next_msg):
    """Seconds between an answer and the user's next message: reading, then typing (5-120 s)."""
    return min(120.0, max(5.0, rng.uniform(4, 35) + len(next_msg) / rng.uniform(3.0, 6.0)))


def schedule_sessions(rng, convs, n_sessions):
    """Spreads an account's conversations over a few visits, with idle time between them, inside the two
    hours; returns [(turns, times)] and how many conversations did not fit (the last of the longest visit go)."""
    sessions = []
    for chunk in (convs[i::n_sessions] for i in range(n_sessions)):
        rel, t = [], 0.0
        for turns in chunk:
            times = [t]
            for msg in turns[1:]:
                times.append(times[-1] + think_time(rng, msg))
            rel.append((turns, times))
            t = times[-1] + rng.uniform(20, 300)
        if rel:
            sessions.append(rel)
    dur = lambda ses: ses[-1][1][-1] + 1.0
    dropped = 0
    while sum(dur(x) for x in sessions) > SPAN_S * 0.98:
        longest = max(sessions, key=dur)
        longest.pop()
        dropped += 1
        sessions = [x for x in sessions if x]
    free = SPAN_S - sum(dur(x) for x in sessions)
    idle = sorted(rng.uniform(0, free) for _ in sessions)
    out, before = [], 0.0
    for ses, gap in zip(sessions, idle):
        out += [(turns, [before + gap + t for t in times]) for turns, times in ses]
        before += dur(ses)
    return out, dropped


# ---- assembly ------------------------------------------------------------------------------------------------

def generate():
    rng = random.Random(SEED)
    author = Author(rng)
    accounts = []  # (kind, client, [(turns, times)])
    dropped = 0

    for topics, client, style in CHAT_USERS:
        convs = []
        weights = [0.55, 0.3, 0.15][: len(topics)]
        for _ in range(rng.randint(15, 26)):
            topic = rng.choices(topics, weights=weights)[0]
            opener, own = chat_opener(author, topic, style, rng)
            if opener is None:
                continue
            k = n_turns(rng, [35, 25, 20, 12, 5, 3]) - 1
            convs.append([opener] + pick_followups(k, own, CHAT[topic]["follow"], style, rng))
        sched, d = schedule_sessions(rng, convs, rng.randint(1, 3))
        dropped += d
        accounts.append(("chat", client, sched))

    for langs, client, style in CODING_USERS:
        convs = []
        for _ in range(rng.randint(10, 18)):
            k = n_turns(rng, [30, 30, 20, 12, 8]) - 1
            if rng.random() < 0.1:  # coders ask other things too
                topic = rng.choice(["tech", "career", "writing"])
                opener, own = chat_opener(author, topic, style, rng)
                fu = pick_followups(k, own, CHAT[topic]["follow"], style, rng)
            else:
                opener, kind = code_opener(author, langs, style, rng)
                fu = pick_followups(k, CODE_FOLLOW[kind or "bug"], None, style, rng, CODE_GENERIC_FOLLOW)
            if opener is None:
                continue
            convs.append([opener] + fu)
        sched, d = schedule_sessions(rng, convs, rng.randint(1, 2))
        dropped += d
        accounts.append(("coding", client, sched))

    oneoff = list(SHORT_ONEOFF)
    rng.shuffle(oneoff)
    for client, style in SHORT_USERS:
        convs = []
        for _ in range(rng.randint(20, 45)):
            if oneoff and rng.random() < 0.5:
                q = author.unique(lambda: styled(oneoff.pop(), style, rng))
            else:
                q = author.unique(lambda: styled(expand(author.template("short" + style, SHORT), rng), style, rng))
            if q is None:
                continue
            convs.append([q] + ([styled(rng.choice(SHORT_FOLLOW), style, rng, first=False)] if rng.random() < 0.1 else []))
        # one-off questions at random moments, now and then two or three close together
        sched, t = [], []
        for turns in convs:
            if t and rng.random() < 0.25:
                t0 = t[-1] + rng.uniform(20, 90)
            else:
                t0 = rng.uniform(0, SPAN_S - 200)
            times = [t0] + [t0 + think_time(rng, m) for m in turns[1:]]
            t.append(times[-1])
            sched.append((turns, times))
        accounts.append(("short", client, sched))

    for _ in range(N_WRITING_USERS):
        convs = []
        for _ in range(rng.randint(12, 18)):
            opener = author.unique(lambda: expand(author.template("copy", WRITING_OPEN), rng))
            if opener is None:
                continue
            convs.append([opener] + rng.sample(WRITING_FOLLOW, n_turns(rng, [40, 35, 25]) - 1))
        sched, d = schedule_sessions(rng, convs, rng.randint(1, 2))
        dropped += d
        accounts.append(("writing", "copy", sched))

    # A quiz app that reads how sure the model is of the answer letter (logprobs), with the options shuffled.
    quiz = []
    for rnd in range(2):
        qs = list(LOGPROB_QUIZ)
        rng.shuffle(qs)
        for q, opts in qs:
            o = list(opts)
            rng.shuffle(o)
            text = q + "\n" + "\n".join(f"{'ABCD'[i]}) {x}" for i, x in enumerate(o)) + "\nAnswer:"
            if norm(text) not in author.used:
                author.used.add(norm(text))
                quiz.append([text])
    sched, t = [], rng.uniform(100, 400)
    for i, turns in enumerate(quiz):
        t += rng.uniform(4, 15) if i % 8 else rng.uniform(200, 700)  # rounds of eight questions
        sched.append((turns, [t]))
    accounts.append(("app", "quiz", [s for s in sched if s[1][0] < SPAN_S]))

    # The linguistics student: a few sittings of cloze prompts, each stem once, about 20-60 s apart.
    stems = list(CLOZE)
    rng.shuffle(stems)
    sched, t = [], rng.uniform(1500, 2500)
    for i, stem in enumerate(stems):
        t += rng.uniform(20, 60) if i % 15 else rng.uniform(600, 1500)
        text = STEM_FORMS[i % len(STEM_FORMS)].replace("{s}", stem)
        author.used.add(norm(text))
        sched.append(([text], [t]))
    accounts.append(("research", "research", [x for x in sched if x[1][0] < SPAN_S]))

    # Batch 1: review sentiment, one request every few seconds from a script.
    seen, sched, t = set(), [], rng.uniform(600, 1200)
    while len(sched) < N_REVIEWS:
        r = make_review(rng)
        if norm(r) in seen:
            continue
        seen.add(norm(r))
        sched.append(([REVIEW_INSTRUCTION.replace("{review}", r)], [t]))
        t += rng.uniform(4.0, 7.0)
    accounts.append(("batch", "reviews", sched))

    # Batch 2: a helpdesk job every five minutes sends the new tickets, one after the other.
    seen, sched = set(), []
    for run in range(24):
        t = 120 + run * 300 + rng.uniform(0, 8)
        for _ in range(rng.randint(10, 22)):
            tk = make_ticket(rng)
            if norm(tk) in seen:
                continue
            seen.add(norm(tk))
            sched.append(([TICKET_INSTRUCTION.replace("{ticket}", tk)], [t]))
            t += rng.uniform(1.0, 2.5)
    accounts.append(("batch", "tickets", sched))

    # Account ids in a shuffled order, so that the id says nothing about the kind.
    ids = [f"user-{i:03d}" for i in range(1, len(accounts) + 1)]
    rng.shuffle(ids)
    rows = []
    for (kind, client, sched), acc in zip(accounts, ids):
        system, params = CLIENTS[client]
        for c, (turns, times) in enumerate(sorted(sched, key=lambda s: s[1][0])):
            for k, (msg, t) in enumerate(zip(turns, times)):
                row = {"account": acc, "kind": kind, "conversation": f"{acc}/c{c}", "turn": k, "t": round(t, 1), "user": msg}
                if system is not None and k == 0:
                    row["system"] = system
                row["params"] = dict(params)
                if client in OCCASIONAL and rng.random() < OCCASIONAL[client][0]:
                    row["params"].update(OCCASIONAL[client][1])
                rows.append(row)
    rows.sort(key=lambda r: (r["t"], r["account"], r["turn"]))
    return rows, dropped


def render(rows):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


# ---- --check -----------------------------------------------------------------------------------------------

KINDS = {"chat", "coding", "short", "writing", "app", "research", "batch"}


def read_prompts(path):
    out = set()
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                out.add(norm(json.loads(line)["prompt"]))
    return out


def suggested_calibration(rows):
    """Every other account of the interactive kinds (by id, within each kind): about 1,000 requests of whole
    accounts. The batch, app and research accounts (the hard cases) stay on the evaluation side."""
    by_kind = defaultdict(set)
    for r in rows:
        by_kind[r["kind"]].add(r["account"])
    return sorted(a for k in ("chat", "coding", "short", "writing") for i, a in enumerate(sorted(by_kind[k])) if i % 2 == 0)


def check():
    errors = []
    with open(OUT, "rb") as f:
        data = f.read()
    rows_now, dropped = generate()
    want = render(rows_now).encode("utf-8")
    if data != want:
        errors.append("benign.jsonl differs from what make_benign.py writes: run python3 data/traffic/make_benign.py")
    rows = []
    for i, line in enumerate(data.decode("utf-8").splitlines(), 1):
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append(f"line {i}: not JSON ({e})")
            continue
        for field, typ in (("account", str), ("kind", str), ("conversation", str), ("turn", int), ("t", (int, float)),
                           ("user", str), ("params", dict)):
            if not isinstance(r.get(field), typ):
                errors.append(f"line {i}: field {field!r} missing or of the wrong type")
        if r.get("kind") not in KINDS:
            errors.append(f"line {i}: kind {r.get('kind')!r} is not one of {sorted(KINDS)}")
        if not 0 <= r.get("t", -1) <= SPAN_S:
            errors.append(f"line {i}: t {r.get('t')} outside [0, {SPAN_S}]")
        if "system" in r and r.get("turn") != 0:
            errors.append(f"line {i}: a system prompt on turn {r.get('turn')} (only turn 0 carries it)")
        if not str(r.get("conversation", "")).startswith(str(r.get("account")) + "/"):
            errors.append(f"line {i}: conversation {r.get('conversation')!r} is not under account {r.get('account')!r}")
        if not r.get("user", "").strip():
            errors.append(f"line {i}: empty user message")
        if not isinstance(r.get("params", {}).get("max_tokens"), int):
            errors.append(f"line {i}: params.max_tokens missing")
        rows.append(r)
    if errors:
        return errors, None

    # Structure of accounts and conversations.
    kind_of, convs = {}, defaultdict(list)
    for r in rows:
        if kind_of.setdefault(r["account"], r["kind"]) != r["kind"]:
            errors.append(f"account {r['account']} has more than one kind")
        convs[r["conversation"]].append(r)
    for c, rs in convs.items():
        turns = [r["turn"] for r in rs]
        if sorted(turns) != list(range(len(rs))):
            errors.append(f"conversation {c}: turns {turns} are not 0..{len(rs) - 1}")
        ts = [r["t"] for r in sorted(rs, key=lambda r: r["turn"])]
        if any(b <= a for a, b in zip(ts, ts[1:])):
            errors.append(f"conversation {c}: times do not increase with the turn")
    if [r["t"] for r in rows] != sorted(r["t"] for r in rows):
        errors.append("lines are not in time order")

    # Duplicates. Openers and one-off questions are all distinct; follow-ups repeat as real ones do.
    openers = Counter(norm(r["user"]) for r in rows if r["turn"] == 0)
    dup_open = [(t, n) for t, n in openers.items() if n > 1]
    for t, n in dup_open[:5]:
        errors.append(f"opener repeated {n} times: {t[:80]!r}")
    shipped = read_prompts(os.path.join(HERE, "..", "prompts", "train.jsonl")) | read_prompts(os.path.join(HERE, "..", "prompts", "heldout.jsonl"))
    crawler = read_prompts(os.path.join(HERE, "templated_crawler.jsonl"))
    in_shipped = [r["user"] for r in rows if norm(r["user"]) in shipped]
    in_crawler = [r["user"] for r in rows if norm(r["user"]) in crawler]
    for u in in_shipped[:5]:
        errors.append(f"a benign message is also a shipped prompt (data/prompts): {u[:80]!r}")
    for u in in_crawler[:5]:
        errors.append(f"a benign message is also a templated-crawler prompt: {u[:80]!r}")

    # Statistics.
    s = {"sha256": hashlib.sha256(data).hexdigest(), "requests": len(rows), "accounts": len(kind_of),
         "conversations": len(convs), "dropped_at_end_of_span": dropped}
    per = {}
    for k in sorted(KINDS):
        rs = [r for r in rows if r["kind"] == k]
        accs = Counter(r["account"] for r in rs)
        cv = Counter(r["conversation"] for r in rs)
        per[k] = {"accounts": len(accs), "conversations": len(cv), "requests": len(rs),
                  "requests_per_account": [min(accs.values()), max(accs.values())] if accs else None,
                  "turns_per_conversation": dict(sorted(Counter(cv.values()).items())),
                  "with_system": sum("system" in r for r in rs),
                  "with_logprobs": sum(bool(r["params"].get("logprobs")) for r in rs),
                  "with_n_gt_1": sum(r["params"].get("n", 1) > 1 for r in rs),
                  "with_seed": sum("seed" in r["params"] for r in rs)}
    s["per_kind"] = per
    nb = [r for r in rows if r["kind"] != "batch"]
    texts = Counter(norm(r["user"]) for r in nb)
    follow = [r for r in nb if r["turn"] > 0]
    s["distinct_messages_outside_batch"] = f"{len(texts)} of {len(nb)} ({100 * len(texts) / len(nb):.1f}%)"
    s["openers_outside_batch"] = f"{sum(1 for r in nb if r['turn'] == 0)}, all distinct: {not dup_open}"
    s["follow_ups"] = f"{len(follow)}, distinct texts {len({norm(r['user']) for r in follow})}"
    batch = [r for r in rows if r["kind"] == "batch"]
    s["batch_items_distinct"] = f"{len({norm(r['user']) for r in batch})} of {len(batch)}"
    s["overlap_with_shipped_prompts"] = len(in_shipped)
    s["overlap_with_templated_crawler"] = len(in_crawler) if crawler else "templated_crawler.jsonl not found"
    s["user_chars"] = {"median": sorted(len(r["user"]) for r in rows)[len(rows) // 2], "max": max(len(r["user"]) for r in rows)}
    # A rough bound on the context a conversation needs: all user text (4 chars a token) + every answer at max_tokens.
    worst = 0
    for c, rs in convs.items():
        n = sum(len(r["user"]) + len(r.get("system", "")) for r in rs) / 4 + sum(r["params"]["max_tokens"] for r in rs)
        worst = max(worst, n)
    s["max_context_tokens_estimate"] = int(worst)
    span = [rows[0]["t"], rows[-1]["t"]]
    s["time_span_s"] = span
    vol = Counter(r["account"] for r in rows)
    s["largest_accounts"] = [(a, kind_of[a], n) for a, n in vol.most_common(4)]
    cal = suggested_calibration(rows)
    n_cal = sum(vol[a] for a in cal)
    s["suggested_calibration"] = {"accounts": len(cal), "requests": n_cal, "evaluation_requests": len(rows) - n_cal,
                                  "account_ids": cal}
    return errors, s


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="verify benign.jsonl and print statistics instead of writing it")
    args = ap.parse_args()
    if args.check:
        errors, summary = check()
        if summary:
            print(json.dumps(summary, indent=1))
        for e in errors:
            print("ERROR:", e, file=sys.stderr)
        print("check:", "FAILED" if errors else "ok", file=sys.stderr)
        return 1 if errors else 0
    rows, dropped = generate()
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(render(rows))
    print(f"wrote {OUT}: {len(rows)} requests from {len({r['account'] for r in rows})} accounts "
          f"({dropped} conversations dropped at the end of the span)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
