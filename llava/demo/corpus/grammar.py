"""English sentences from a small grammar, each with a rule-based German translation.

Sentence patterns (tense present or past; an optional time adverb at the start or the end):
  transitive    Subj Verb Obj [Place]       "The old teacher bought three red apples in Berlin."
  intransitive  Subj Verb [Place]           "Two dogs sleep in the garden."
  copula        Subj is/was Adj             "The children were hungry yesterday."
  existential   There is/was NP Place       "There are some green bottles in the kitchen."

German rules: noun phrases take the nominative (subject) or accusative (object, after "es gibt")
with the article and adjective ending of their gender, number and determiner (weak endings after
the definite article, mixed after "ein", strong without an article); the finite verb stays in
second position, so a sentence-initial time adverb inverts subject and verb ("Gestern kaufte der
Lehrer ..."), and a sentence-final English time adverb moves right behind the German verb
("Der Lehrer kaufte gestern ..."). Place phrases are translated as whole phrases. The output is
not always idiomatic German, but it is consistent, so translation is learnable.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from llava.demo.corpus.lexicon import (
    ADJECTIVES,
    INTRANSITIVE_VERBS,
    NAMES,
    NOUNS,
    NUMBERS,
    PERSON,
    PLACES,
    TIMES,
    TRANSITIVE_VERBS,
    Adjective,
    Noun,
    Place,
    TimeAdverb,
    Verb,
)

_DEF_ARTICLE = {
    "nom": {"m": "der", "f": "die", "n": "das", "pl": "die"},
    "acc": {"m": "den", "f": "die", "n": "das", "pl": "die"},
}
_INDEF_ARTICLE = {
    "nom": {"m": "ein", "f": "eine", "n": "ein"},
    "acc": {"m": "einen", "f": "eine", "n": "ein"},
}
# Adjective endings by declension type, case and gender ("pl" for plural).
_WEAK = {
    "nom": {"m": "e", "f": "e", "n": "e", "pl": "en"},
    "acc": {"m": "en", "f": "e", "n": "e", "pl": "en"},
}
_MIXED = {"nom": {"m": "er", "f": "e", "n": "es"}, "acc": {"m": "en", "f": "e", "n": "es"}}
_STRONG_PLURAL = "e"
_QUANTIFIERS = {"some": "einige", "many": "viele"}

MIN_WORDS, MAX_WORDS = 4, 14  # about 1-5 s of speech


@dataclass(frozen=True)
class Sentence:
    """An English sentence and its German translation."""

    en: str
    de: str


@dataclass(frozen=True)
class NounPhrase:
    """A noun phrase that renders in English and (in a given case) in German."""

    noun: Noun | None  # None for a proper name
    plural: bool = False
    det: str = "def"  # def | indef | num | some | many | bare | name
    adj: Adjective | None = None
    number: str = ""  # English number word for det == "num"
    name: str = ""  # for det == "name"

    def en(self) -> str:
        if self.det == "name":
            return self.name
        assert self.noun is not None
        words = [self.adj.en] if self.adj else []
        words.append(self.noun.en_pl if self.plural else self.noun.en)
        if self.det == "def":
            words.insert(0, "the")
        elif self.det == "indef":
            words.insert(0, "an" if words[0][0] in "aeiou" else "a")
        elif self.det == "num":
            words.insert(0, self.number)
        elif self.det in _QUANTIFIERS:
            words.insert(0, self.det)
        return " ".join(words)

    def de(self, case: str) -> str:
        if self.det == "name":
            return self.name
        assert self.noun is not None
        key = "pl" if self.plural else self.noun.gender
        if self.det == "def":
            article, ending = _DEF_ARTICLE[case][key], _WEAK[case][key]
        elif self.det == "indef":
            article, ending = _INDEF_ARTICLE[case][key], _MIXED[case][key]
        elif self.det == "num":
            article, ending = NUMBERS[self.number], _STRONG_PLURAL
        elif self.det in _QUANTIFIERS:
            article, ending = _QUANTIFIERS[self.det], _STRONG_PLURAL
        else:  # bare plural
            article, ending = "", _STRONG_PLURAL
        words = [article] if article else []
        if self.adj:
            words.append(self.adj.de + ending)
        words.append(self.noun.de_pl if self.plural else self.noun.de)
        return " ".join(words)


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _adjective_for(rng: random.Random, noun: Noun, exclude: Adjective | None = None) -> Adjective:
    options = [a for a in ADJECTIVES if noun.kind in a.kinds and a is not exclude]
    return rng.choice(options)


def _noun_phrase(rng: random.Random, nouns: list[Noun], role: str, allow_name: bool) -> NounPhrase:
    if allow_name and rng.random() < 0.2:
        return NounPhrase(noun=None, det="name", name=rng.choice(NAMES))
    noun = rng.choice(nouns)
    adj = _adjective_for(rng, noun) if rng.random() < 0.35 else None
    if rng.random() < (0.6 if role == "subject" else 0.5):
        return NounPhrase(noun=noun, det=rng.choice(("def", "def", "indef")), adj=adj)
    dets = (
        ("def", "num", "num", "some", "many")
        if role == "subject"
        else ("def", "num", "num", "some", "many", "bare")
    )
    det = rng.choice(dets)
    number = rng.choice(list(NUMBERS)) if det == "num" else ""
    return NounPhrase(noun=noun, plural=True, det=det, adj=adj, number=number)


def _time_for(rng: random.Random, tense: str) -> TimeAdverb:
    return rng.choice([t for t in TIMES if t.tense in (tense, "any")])


def _verb_forms(verb: Verb, tense: str, plural: bool) -> tuple[str, str]:
    if tense == "past":
        return verb.en_past, verb.de_past_pl() if plural else verb.de_past
    return (verb.en if plural else verb.en_3sg), (verb.de if plural else verb.de_3sg)


def _be_forms(tense: str, plural: bool) -> tuple[str, str]:
    if tense == "past":
        return ("were", "waren") if plural else ("was", "war")
    return ("are", "sind") if plural else ("is", "ist")


def _assemble(
    subject_en: str,
    subject_de: str,
    verb_en: str,
    verb_de: str,
    rest_en: list[str],
    rest_de: list[str],
    time: TimeAdverb | None,
    time_first: bool,
) -> Sentence:
    """English: [Time] Subj Verb Rest [Time]; German: verb second, time right after the verb."""
    en = [subject_en, verb_en, *rest_en]
    if time is not None and time_first:
        en.insert(0, time.en)
        de = [time.de, verb_de, subject_de, *rest_de]
    else:
        if time is not None:
            en.append(time.en)
        de = [subject_de, verb_de] + ([time.de] if time is not None else []) + rest_de
    en_text = _capitalise(" ".join(w for w in en if w)) + "."
    de_text = _capitalise(" ".join(w for w in de if w)) + "."
    return Sentence(en=en_text, de=de_text)


def _place(rng: random.Random) -> Place:
    return rng.choice(PLACES)


def _transitive(rng: random.Random, tense: str) -> tuple[NounPhrase, str, str, list[str], list[str]]:
    verb = rng.choice(TRANSITIVE_VERBS)
    subject = _noun_phrase(
        rng, [n for n in NOUNS if n.kind in verb.subjects], "subject", PERSON in verb.subjects
    )
    objects = [n for n in NOUNS if verb.takes(n) and n is not subject.noun]
    obj = _noun_phrase(rng, objects, "object", PERSON in verb.objects)
    if obj.det == "name" and obj.name == subject.name:
        obj = NounPhrase(noun=None, det="name", name=NAMES[(NAMES.index(obj.name) + 1) % len(NAMES)])
    v_en, v_de = _verb_forms(verb, tense, subject.plural)
    rest_en, rest_de = [obj.en()], [obj.de("acc")]
    if rng.random() < 0.4:
        place = _place(rng)
        rest_en.append(place.en)
        rest_de.append(place.de)
    return subject, v_en, v_de, rest_en, rest_de


def _intransitive(rng: random.Random, tense: str) -> tuple[NounPhrase, str, str, list[str], list[str]]:
    verb = rng.choice(INTRANSITIVE_VERBS)
    subject = _noun_phrase(
        rng, [n for n in NOUNS if n.kind in verb.subjects], "subject", PERSON in verb.subjects
    )
    v_en, v_de = _verb_forms(verb, tense, subject.plural)
    rest_en: list[str] = []
    rest_de: list[str] = []
    if rng.random() < 0.75:
        place = _place(rng)
        rest_en.append(place.en)
        rest_de.append(place.de)
    return subject, v_en, v_de, rest_en, rest_de


def _copula(rng: random.Random, tense: str) -> tuple[NounPhrase, str, str, list[str], list[str]]:
    subject = _noun_phrase(rng, list(NOUNS), "subject", True)
    kind = subject.noun.kind if subject.noun is not None else PERSON
    options = [a for a in ADJECTIVES if kind in a.kinds and a is not subject.adj]
    predicate = rng.choice(options)
    v_en, v_de = _be_forms(tense, subject.plural)
    return subject, v_en, v_de, [predicate.en], [predicate.de]


def _existential(rng: random.Random, tense: str, time: TimeAdverb | None, time_first: bool) -> Sentence:
    noun = rng.choice([n for n in NOUNS if n.kind != PERSON])
    np_ = _noun_phrase(rng, [noun], "object", False)
    if np_.det in ("def", "bare"):  # "there is the ..." is odd; use the indefinite forms
        np_ = NounPhrase(noun=noun, plural=np_.plural, det="some" if np_.plural else "indef", adj=np_.adj)
    be_en, _ = _be_forms(tense, np_.plural)
    gibt = "gab" if tense == "past" else "gibt"
    place = _place(rng)
    en = ["there", be_en, np_.en(), place.en]
    if time is not None and time_first:
        en.insert(0, time.en)
        de = [time.de, gibt, "es", np_.de("acc"), place.de]
    else:
        if time is not None:
            en.append(time.en)
        de = ["es", gibt] + ([time.de] if time is not None else []) + [np_.de("acc"), place.de]
    return Sentence(en=_capitalise(" ".join(en)) + ".", de=_capitalise(" ".join(de)) + ".")


_PATTERNS = (("transitive", 0.5), ("intransitive", 0.2), ("copula", 0.15), ("existential", 0.15))


def generate_sentence(rng: random.Random) -> Sentence:
    """One random sentence pair; all randomness comes from `rng` (deterministic for a seeded rng)."""
    while True:
        pattern = rng.choices([p for p, _ in _PATTERNS], weights=[w for _, w in _PATTERNS])[0]
        tense = rng.choice(("present", "past"))
        time = _time_for(rng, tense) if rng.random() < 0.35 else None
        time_first = rng.random() < 0.4
        if pattern == "existential":
            sentence = _existential(rng, tense, time, time_first)
        else:
            build = {"transitive": _transitive, "intransitive": _intransitive, "copula": _copula}[pattern]
            subject, v_en, v_de, rest_en, rest_de = build(rng, tense)
            sentence = _assemble(
                subject.en(), subject.de("nom"), v_en, v_de, rest_en, rest_de, time, time_first
            )
        if MIN_WORDS <= len(sentence.en.split()) <= MAX_WORDS:
            return sentence


def generate_sentences(rng: random.Random, n: int, exclude: set[str] | None = None) -> list[Sentence]:
    """`n` sentence pairs with distinct English sides, none of them in `exclude`."""
    seen = set(exclude or ())
    out: list[Sentence] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise RuntimeError(f"the grammar produced only {len(out)} distinct sentences of {n} requested")
        s = generate_sentence(rng)
        if s.en not in seen:
            seen.add(s.en)
            out.append(s)
    return out
