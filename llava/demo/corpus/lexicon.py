"""The bilingual English/German vocabulary of the synthetic corpus (a few hundred words).

Each table is a block of `|`-separated lines, parsed once at import. The vocabulary stays small on
purpose, so that tiny models can learn it; German forms are listed rather than derived wherever
German is irregular. Nouns that decline in the accusative singular ("den Studenten") are left out,
so that the translation rules stay simple.
"""

from __future__ import annotations

from dataclasses import dataclass

PERSON, ANIMAL, THING, FOOD = "person", "animal", "thing", "food"
KINDS = (PERSON, ANIMAL, THING, FOOD)


@dataclass(frozen=True)
class Noun:
    en: str
    en_pl: str
    de: str
    de_pl: str
    gender: str  # "m" | "f" | "n"
    kind: str  # one of KINDS


@dataclass(frozen=True)
class Adjective:
    en: str
    de: str  # the undeclined (predicative) form; attributive endings are added by the grammar
    kinds: frozenset[str]


@dataclass(frozen=True)
class Verb:
    en: str  # base form ("buy")
    en_3sg: str
    en_past: str
    de: str  # infinitive = present tense 3rd person plural for every verb here
    de_3sg: str
    de_past: str  # 3rd person singular Präteritum; the plural adds "n" or "en"
    subjects: frozenset[str]  # noun kinds that can be the subject
    objects: frozenset[str]  # noun kinds or individual English nouns that can be the object

    def de_past_pl(self) -> str:
        return self.de_past + ("n" if self.de_past.endswith("e") else "en")

    def takes(self, noun: Noun) -> bool:
        return noun.kind in self.objects or noun.en in self.objects


@dataclass(frozen=True)
class Place:
    en: str  # a prepositional phrase: "in the park", "in Berlin"
    de: str
    answer: str  # the phrase without its preposition (the extractive answer to "where")


@dataclass(frozen=True)
class TimeAdverb:
    en: str
    de: str
    tense: str  # "present" | "past" | "any"


def _rows(block: str) -> list[list[str]]:
    return [[f.strip() for f in line.split("|")] for line in block.strip().splitlines() if line.strip()]


def _set(field: str) -> frozenset[str]:
    return frozenset(x.strip() for x in field.split(",") if x.strip())


_NOUNS = """
teacher|teachers|Lehrer|Lehrer|m|person
doctor|doctors|Arzt|Ärzte|m|person
woman|women|Frau|Frauen|f|person
man|men|Mann|Männer|m|person
child|children|Kind|Kinder|n|person
girl|girls|Mädchen|Mädchen|n|person
baker|bakers|Bäcker|Bäcker|m|person
cook|cooks|Koch|Köche|m|person
singer|singers|Sänger|Sänger|m|person
driver|drivers|Fahrer|Fahrer|m|person
painter|painters|Maler|Maler|m|person
friend|friends|Freund|Freunde|m|person
sister|sisters|Schwester|Schwestern|f|person
brother|brothers|Bruder|Brüder|m|person
mother|mothers|Mutter|Mütter|f|person
father|fathers|Vater|Väter|m|person
dancer|dancers|Tänzerin|Tänzerinnen|f|person
writer|writers|Schriftsteller|Schriftsteller|m|person
king|kings|König|Könige|m|person
queen|queens|Königin|Königinnen|f|person
farmer|farmers|Landwirt|Landwirte|m|person
waiter|waiters|Kellner|Kellner|m|person
nurse|nurses|Pflegerin|Pflegerinnen|f|person
dog|dogs|Hund|Hunde|m|animal
cat|cats|Katze|Katzen|f|animal
horse|horses|Pferd|Pferde|n|animal
bird|birds|Vogel|Vögel|m|animal
cow|cows|Kuh|Kühe|f|animal
mouse|mice|Maus|Mäuse|f|animal
sheep|sheep|Schaf|Schafe|n|animal
duck|ducks|Ente|Enten|f|animal
goat|goats|Ziege|Ziegen|f|animal
pig|pigs|Schwein|Schweine|n|animal
rabbit|rabbits|Kaninchen|Kaninchen|n|animal
fox|foxes|Fuchs|Füchse|m|animal
book|books|Buch|Bücher|n|thing
car|cars|Auto|Autos|n|thing
house|houses|Haus|Häuser|n|thing
letter|letters|Brief|Briefe|m|thing
chair|chairs|Stuhl|Stühle|m|thing
table|tables|Tisch|Tische|m|thing
cup|cups|Tasse|Tassen|f|thing
ball|balls|Ball|Bälle|m|thing
flower|flowers|Blume|Blumen|f|thing
bottle|bottles|Flasche|Flaschen|f|thing
key|keys|Schlüssel|Schlüssel|m|thing
bag|bags|Tasche|Taschen|f|thing
hat|hats|Hut|Hüte|m|thing
shoe|shoes|Schuh|Schuhe|m|thing
bike|bikes|Fahrrad|Fahrräder|n|thing
picture|pictures|Bild|Bilder|n|thing
song|songs|Lied|Lieder|n|thing
box|boxes|Kiste|Kisten|f|thing
lamp|lamps|Lampe|Lampen|f|thing
clock|clocks|Uhr|Uhren|f|thing
window|windows|Fenster|Fenster|n|thing
door|doors|Tür|Türen|f|thing
boat|boats|Boot|Boote|n|thing
map|maps|Karte|Karten|f|thing
coat|coats|Mantel|Mäntel|m|thing
glass|glasses|Glas|Gläser|n|thing
ring|rings|Ring|Ringe|m|thing
stone|stones|Stein|Steine|m|thing
tree|trees|Baum|Bäume|m|thing
newspaper|newspapers|Zeitung|Zeitungen|f|thing
pen|pens|Stift|Stifte|m|thing
bed|beds|Bett|Betten|n|thing
apple|apples|Apfel|Äpfel|m|food
cake|cakes|Kuchen|Kuchen|m|food
egg|eggs|Ei|Eier|n|food
fish|fish|Fisch|Fische|m|food
orange|oranges|Orange|Orangen|f|food
banana|bananas|Banane|Bananen|f|food
pear|pears|Birne|Birnen|f|food
tomato|tomatoes|Tomate|Tomaten|f|food
potato|potatoes|Kartoffel|Kartoffeln|f|food
cookie|cookies|Keks|Kekse|m|food
sausage|sausages|Wurst|Würste|f|food
lemon|lemons|Zitrone|Zitronen|f|food
carrot|carrots|Karotte|Karotten|f|food
"""

_ADJECTIVES = """
big|groß|person,animal,thing,food
small|klein|person,animal,thing,food
old|alt|person,animal,thing
young|jung|person,animal
new|neu|thing
red|rot|thing,food
blue|blau|thing
green|grün|thing,food
white|weiß|animal,thing
black|schwarz|animal,thing
yellow|gelb|thing,food
brown|braun|animal,thing
happy|glücklich|person,animal
tired|müde|person,animal
friendly|freundlich|person,animal
strong|stark|person,animal
clever|klug|person,animal
brave|mutig|person,animal
funny|lustig|person,animal
hungry|hungrig|person,animal
quiet|ruhig|person,animal
lazy|faul|person,animal
sick|krank|person,animal
famous|berühmt|person
rich|reich|person
heavy|schwer|thing
cheap|billig|thing,food
beautiful|schön|person,animal,thing
clean|sauber|thing
dirty|schmutzig|animal,thing
fresh|frisch|food
sweet|süß|food
long|lang|thing
fast|schnell|person,animal
warm|warm|thing,food
cold|kalt|thing,food
"""

_TRANSITIVE = """
buy|buys|bought|kaufen|kauft|kaufte|person|thing,food,animal
see|sees|saw|sehen|sieht|sah|person,animal|person,animal,thing,food
find|finds|found|finden|findet|fand|person,animal|animal,thing,food
carry|carries|carried|tragen|trägt|trug|person|animal,thing,food
paint|paints|painted|malen|malt|malte|person|person,animal,thing,food
sell|sells|sold|verkaufen|verkauft|verkaufte|person|animal,thing,food
open|opens|opened|öffnen|öffnet|öffnete|person|door,window,box,bottle,bag,book,letter
clean|cleans|cleaned|putzen|putzt|putzte|person|thing
like|likes|liked|mögen|mag|mochte|person,animal|person,animal,thing,food
visit|visits|visited|besuchen|besucht|besuchte|person|person
feed|feeds|fed|füttern|füttert|fütterte|person|animal
wash|washes|washed|waschen|wäscht|wusch|person|animal,thing,food
read|reads|read|lesen|liest|las|person|book,letter,map,newspaper
write|writes|wrote|schreiben|schreibt|schrieb|person|book,letter,song
eat|eats|ate|essen|isst|aß|person,animal|food
bring|brings|brought|bringen|bringt|brachte|person|animal,thing,food
hold|holds|held|halten|hält|hielt|person|animal,thing,food
need|needs|needed|brauchen|braucht|brauchte|person,animal|thing,food
draw|draws|drew|zeichnen|zeichnet|zeichnete|person|person,animal,thing,food
lose|loses|lost|verlieren|verliert|verlor|person|thing
build|builds|built|bauen|baut|baute|person|house,boat,table,chair,box,bed
love|loves|loved|lieben|liebt|liebte|person|person,animal
hear|hears|heard|hören|hört|hörte|person,animal|person,animal,song
count|counts|counted|zählen|zählt|zählte|person|animal,thing,food
cook|cooks|cooked|kochen|kocht|kochte|person|egg,fish,potato,sausage,carrot,tomato
catch|catches|caught|fangen|fängt|fing|person,animal|ball,fish,mouse,bird,rabbit
watch|watches|watched|beobachten|beobachtet|beobachtete|person,animal|person,animal
choose|chooses|chose|wählen|wählt|wählte|person|thing,food,animal
"""

_INTRANSITIVE = """
sleep|sleeps|slept|schlafen|schläft|schlief|person,animal|
sing|sings|sang|singen|singt|sang|person|
dance|dances|danced|tanzen|tanzt|tanzte|person|
laugh|laughs|laughed|lachen|lacht|lachte|person|
work|works|worked|arbeiten|arbeitet|arbeitete|person|
wait|waits|waited|warten|wartet|wartete|person,animal|
play|plays|played|spielen|spielt|spielte|person,animal|
swim|swims|swam|schwimmen|schwimmt|schwamm|person,animal|
run|runs|ran|laufen|läuft|lief|person,animal|
cry|cries|cried|weinen|weint|weinte|person|
read|reads|read|lesen|liest|las|person|
write|writes|wrote|schreiben|schreibt|schrieb|person|
cook|cooks|cooked|kochen|kocht|kochte|person|
sit|sits|sat|sitzen|sitzt|saß|person,animal|
eat|eats|ate|essen|isst|aß|person,animal|
"""

_PLACES = """
in the park|im Park|the park
in the garden|im Garten|the garden
in the kitchen|in der Küche|the kitchen
in the school|in der Schule|the school
in the city|in der Stadt|the city
in the forest|im Wald|the forest
at the market|auf dem Markt|the market
at the station|am Bahnhof|the station
on the beach|am Strand|the beach
near the river|am Fluss|the river
in the village|im Dorf|the village
in the library|in der Bibliothek|the library
in the hotel|im Hotel|the hotel
in the office|im Büro|the office
at home|zu Hause|home
on the farm|auf dem Bauernhof|the farm
in the street|auf der Straße|the street
in the shop|im Laden|the shop
on the bridge|auf der Brücke|the bridge
in the museum|im Museum|the museum
"""

# English name | German name (cities are also places: "in Berlin" / "in Berlin").
_CITIES = """
Berlin|Berlin
Paris|Paris
London|London
Rome|Rom
Vienna|Wien
Madrid|Madrid
Hamburg|Hamburg
Munich|München
Zurich|Zürich
Oslo|Oslo
Prague|Prag
Lisbon|Lissabon
Dublin|Dublin
Athens|Athen
Warsaw|Warschau
Cologne|Köln
Geneva|Genf
Venice|Venedig
"""

_TIMES = """
yesterday|gestern|past
today|heute|present
every day|jeden Tag|present
every morning|jeden Morgen|present
last week|letzte Woche|past
last year|letztes Jahr|past
in the morning|am Morgen|any
in the evening|am Abend|any
on Monday|am Montag|any
on Tuesday|am Dienstag|any
on Wednesday|am Mittwoch|any
on Thursday|am Donnerstag|any
on Friday|am Freitag|any
on Saturday|am Samstag|any
on Sunday|am Sonntag|any
often|oft|present
"""

# Invented people; the same in both languages.
NAMES = (
    "Anna Tom Mira Felix Lena Oskar Greta Jonas Clara Emil Ida Hugo Paula Max Rosa Otto Vera Bruno "
    "Nora Leo Maria Paul Julia Ben Sara Karl Eva Tim Lisa Jan Marta Finn Hanna Luca Olga Theo"
).split()

# Numbers used as plural determiners, English -> German.
NUMBERS = {
    "two": "zwei",
    "three": "drei",
    "four": "vier",
    "five": "fünf",
    "six": "sechs",
    "seven": "sieben",
    "eight": "acht",
    "nine": "neun",
    "ten": "zehn",
    "eleven": "elf",
    "twelve": "zwölf",
}

NOUNS = tuple(Noun(*r) for r in _rows(_NOUNS))
ADJECTIVES = tuple(Adjective(r[0], r[1], _set(r[2])) for r in _rows(_ADJECTIVES))
TRANSITIVE_VERBS = tuple(Verb(*r[:6], _set(r[6]), _set(r[7])) for r in _rows(_TRANSITIVE))
INTRANSITIVE_VERBS = tuple(Verb(*r[:6], _set(r[6]), frozenset()) for r in _rows(_INTRANSITIVE))
CITIES = tuple((r[0], r[1]) for r in _rows(_CITIES))
PLACES = tuple(Place(*r) for r in _rows(_PLACES)) + tuple(
    Place(f"in {en}", f"in {de}", en) for en, de in CITIES
)
TIMES = tuple(TimeAdverb(*r) for r in _rows(_TIMES))
DAYS = tuple(t.en.split()[1] for t in TIMES if t.en.startswith("on "))


def nouns_of(*kinds: str) -> tuple[Noun, ...]:
    return tuple(n for n in NOUNS if n.kind in kinds)


def english_vocabulary() -> set[str]:
    """Every English word form the grammar and the passages can produce (lower case, no punctuation)."""
    words: set[str] = set()

    def add(text: str) -> None:
        words.update(text.lower().split())

    for n in NOUNS:
        add(f"{n.en} {n.en_pl}")
    for a in ADJECTIVES:
        add(a.en)
    for v in TRANSITIVE_VERBS + INTRANSITIVE_VERBS:
        add(f"{v.en} {v.en_3sg} {v.en_past}")
    for p in PLACES:
        add(p.en)
    for t in TIMES:
        add(t.en)
    for name in NAMES:
        add(name)
    for num in NUMBERS:
        add(num)
    return words
