"""Short template passages about invented people, with questions and extractive answers (for SQA).

A passage introduces a person and adds two to four facts about them (a pet, a weekly activity, a
purchase, a friend, food, where they keep something), 3-5 sentences in all. Every fact yields
questions whose answer is a span of the passage, as in SQuAD.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from llava.demo.corpus.lexicon import (
    ADJECTIVES,
    ANIMAL,
    CITIES,
    DAYS,
    FOOD,
    INTRANSITIVE_VERBS,
    NAMES,
    NUMBERS,
    PERSON,
    PLACES,
    THING,
    nouns_of,
)

# Person nouns that read as a job.
JOBS = tuple(
    n
    for n in nouns_of(PERSON)
    if n.en
    in {
        "teacher",
        "doctor",
        "baker",
        "cook",
        "singer",
        "driver",
        "painter",
        "dancer",
        "writer",
        "farmer",
        "waiter",
        "nurse",
    }
)
_ROOM_PLACES = tuple(p for p in PLACES if p.en.startswith("in the "))
_LOCAL_PLACES = tuple(p for p in PLACES if not p.en.startswith("in ") or p.en.startswith("in the "))
_PERSON_VERBS = tuple(v for v in INTRANSITIVE_VERBS if PERSON in v.subjects)


@dataclass(frozen=True)
class QA:
    question: str
    answer: str


@dataclass(frozen=True)
class Passage:
    context: str  # the passage text (what is spoken)
    qas: tuple[QA, ...]  # every question the passage answers


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _adjective(rng: random.Random, kind: str, among: tuple[str, ...] = ()) -> str:
    options = [a.en for a in ADJECTIVES if kind in a.kinds and (not among or a.en in among)]
    return rng.choice(options)


def _fact_pet(rng: random.Random, name: str, others: list[str]) -> tuple[str, list[QA]]:
    pet = rng.choice(nouns_of(ANIMAL))
    color = _adjective(rng, ANIMAL, ("white", "black", "brown"))
    pet_name = rng.choice([n for n in NAMES if n not in others])
    others.append(pet_name)
    text = f"{name} has {_article(color)} {color} {pet.en} called {pet_name}."
    return text, [
        QA(f"What is the name of the {pet.en}?", pet_name),
        QA(f"What color is the {pet.en}?", color),
        QA(f"Which animal does {name} have?", pet.en),
    ]


def _fact_activity(rng: random.Random, name: str, others: list[str]) -> tuple[str, list[QA]]:
    verb = rng.choice(_PERSON_VERBS)
    place = rng.choice(_LOCAL_PLACES)
    day = rng.choice(DAYS)
    text = f"{name} {verb.en_3sg} {place.en} every {day}."
    return text, [
        QA(f"When does {name} {verb.en}?", f"every {day}"),
        QA(f"Where does {name} {verb.en}?", place.answer),
    ]


def _fact_purchase(rng: random.Random, name: str, others: list[str]) -> tuple[str, list[QA]]:
    noun = rng.choice(nouns_of(THING, FOOD))
    adj = _adjective(rng, noun.kind)
    number = rng.choice(list(NUMBERS))
    city = rng.choice(CITIES)[0]
    text = f"{name} bought {number} {adj} {noun.en_pl} in {city} last year."
    return text, [
        QA(f"How many {noun.en_pl} did {name} buy?", number),
        QA(f"What did {name} buy in {city}?", f"{number} {adj} {noun.en_pl}"),
        QA(f"Where did {name} buy the {noun.en_pl}?", city),
    ]


def _fact_friend(rng: random.Random, name: str, others: list[str]) -> tuple[str, list[QA]]:
    friend = rng.choice([n for n in NAMES if n not in others])
    others.append(friend)
    job = rng.choice(JOBS)
    city = rng.choice(CITIES)[0]
    text = f"The best friend of {name} is {friend}, {_article(job.en)} {job.en} from {city}."
    return text, [
        QA(f"Who is the best friend of {name}?", friend),
        QA(f"Where is {friend} from?", city),
        QA(f"What is the job of {friend}?", job.en),
    ]


def _fact_food(rng: random.Random, name: str, others: list[str]) -> tuple[str, list[QA]]:
    liked, disliked = rng.sample(nouns_of(FOOD), 2)
    text = f"{name} likes {liked.en_pl} but does not like {disliked.en_pl}."
    return text, [
        QA(f"What does {name} like?", liked.en_pl),
        QA(f"What does {name} not like?", disliked.en_pl),
    ]


def _fact_keeps(rng: random.Random, name: str, others: list[str]) -> tuple[str, list[QA]]:
    noun = rng.choice(nouns_of(THING))
    adj = _adjective(rng, THING)
    place = rng.choice(_ROOM_PLACES)
    text = f"{name} keeps {_article(adj)} {adj} {noun.en} {place.en}."
    return text, [
        QA(f"Where does {name} keep the {noun.en}?", place.answer),
        QA(f"What does {name} keep {place.en}?", f"{_article(adj)} {adj} {noun.en}"),
    ]


_FACTS = (_fact_pet, _fact_activity, _fact_purchase, _fact_friend, _fact_food, _fact_keeps)


def generate_passage(rng: random.Random) -> Passage:
    """One passage of 3-5 sentences with all the questions it answers."""
    name = rng.choice(NAMES)
    others = [name]
    job = rng.choice(JOBS)
    city = rng.choice(CITIES)[0]
    if rng.random() < 0.5:
        sentences = [f"{name} is {_article(job.en)} {job.en} who lives in {city}."]
        qas = [QA(f"Where does {name} live?", city)]
    else:
        sentences = [f"{name} works as {_article(job.en)} {job.en} in {city}."]
        qas = [QA(f"Where does {name} work?", city)]
    qas.append(QA(f"What is the job of {name}?", job.en))
    for fact in rng.sample(_FACTS, rng.randint(2, 4)):
        text, fact_qas = fact(rng, name, others)
        sentences.append(text)
        qas.extend(fact_qas)
    return Passage(context=" ".join(sentences), qas=tuple(qas))


def generate_passages(rng: random.Random, n: int, exclude: set[str] | None = None) -> list[Passage]:
    """`n` passages with distinct texts, none of them in `exclude`."""
    seen = set(exclude or ())
    out: list[Passage] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise RuntimeError(f"the templates produced only {len(out)} distinct passages of {n} requested")
        p = generate_passage(rng)
        if p.context not in seen:
            seen.add(p.context)
            out.append(p)
    return out
