"""The synthetic spoken corpus: the embedded default data, built locally with espeak-ng.

`python -m llava.dataset.synth --out DIR --size {tiny,small,medium} --seed N` writes MuST-C-style
ASR/ST parquet files, mixed-NWP files with word boundaries, Spoken-SQuAD-style SQA files, a text
corpus for the tiny LLM and ready-made data configs (see `build.py`). Sentences come from a small
English grammar with a rule-based German translation (`grammar.py`, `lexicon.py`), SQA passages
from templates (`passages.py`), speech and word timings from espeak-ng (`espeak.py`, `speech.py`).
"""

from llava.dataset.synth.build import SIZES, CorpusSize, build_corpus, plan_corpus
from llava.dataset.synth.configs import write_configs
from llava.dataset.synth.espeak import EspeakUnavailableError, espeak_available, get_espeak
from llava.dataset.synth.grammar import Sentence, generate_sentence, generate_sentences
from llava.dataset.synth.passages import QA, Passage, generate_passage, generate_passages
from llava.dataset.synth.speech import SpokenText, speak

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
