"""The synthetic spoken corpus: the embedded default data, built locally with espeak-ng.

`python -m llava.demo.corpus --out DIR --size {tiny,small,medium} --seed N` writes MuST-C-style
ASR/ST parquet files, mixed-NWP files with word boundaries, Spoken-SQuAD-style SQA files, a text
corpus for the tiny LLM and ready-made data configs (see `build.py`). Sentences come from a small
English grammar with a rule-based German translation (`grammar.py`, `lexicon.py`), SQA passages
from templates (`passages.py`), speech and word timings from espeak-ng (`espeak.py`, `speech.py`).
"""

from llava.demo.corpus.build import SIZES, CorpusSize, build_corpus, plan_corpus
from llava.demo.corpus.configs import write_configs
from llava.demo.corpus.espeak import EspeakUnavailableError, espeak_available, get_espeak
from llava.demo.corpus.grammar import Sentence, generate_sentence, generate_sentences
from llava.demo.corpus.passages import QA, Passage, generate_passage, generate_passages
from llava.demo.corpus.speech import SpokenText, speak

__all__ = [
    "QA",
    "SIZES",
    "CorpusSize",
    "EspeakUnavailableError",
    "Passage",
    "Sentence",
    "SpokenText",
    "build_corpus",
    "espeak_available",
    "generate_passage",
    "generate_passages",
    "generate_sentence",
    "generate_sentences",
    "get_espeak",
    "plan_corpus",
    "speak",
    "write_configs",
]
