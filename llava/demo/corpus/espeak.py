"""Speech synthesis with espeak-ng through `ctypes`, with word start times from the library's events.

The shared library and its voice data come from the PyPI package `espeakng-loader`, so nothing needs
to be installed system-wide. espeak-ng keeps global state (it is not thread-safe, and its output for
a text depends slightly on what it synthesised before: waveform phase, pitch flutter, a noise
generator). To make every utterance a pure function of (text, voice, rate, pitch, seed), each call
unloads and reloads the library (well under a millisecond) and seeds its noise generator; calls are
serialised by a process-wide lock. Different processes each load their own copy, so a process pool
can synthesise in parallel and still produce byte-identical audio.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import numpy as np

try:  # `_ctypes.dlclose` (POSIX) / `FreeLibrary` (Windows) are what unload a shared library.
    from _ctypes import dlclose as _unload_library
except ImportError:  # pragma: no cover - Windows
    try:
        from _ctypes import FreeLibrary as _unload_library
    except ImportError:
        _unload_library = None

INSTALL_HINT = "pip install espeakng-loader  (or: pip install 'speech-llava[synth]')"

# Values from espeak-ng's speak_lib.h (API revision 12).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_BUFFER_MS = 500  # audio per callback; longer buffers mean fewer Python callbacks
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000  # report a missing data directory instead of calling exit()
_PARAM_RATE = 1
_PARAM_PITCH = 3
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
# Phoneme names that are pauses or markers rather than sounds.
_SILENT_PHONEMES = frozenset({"_", "_:", "_!", "_^_", ";", "||", "|"})
_PHONEME_SEPARATOR = "|"

RATE_MIN, RATE_MAX = 80, 450  # words per minute accepted by espeak-ng
NATIVE_SAMPLING_RATE = 22050


class EspeakUnavailableError(RuntimeError):
    """The espeak-ng library or its data cannot be loaded."""


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character index into the text
        ("length", ctypes.c_int),  # word length in characters (WORD events)
        ("audio_position", ctypes.c_int),  # milliseconds from the start of this message's audio
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass
class WordEvent:
    """One espeak-ng WORD event: where the word is in the text and when it starts in the audio."""

    char_start: int  # 0-based character offset into the synthesised text
    char_length: int
    start: float  # seconds


@dataclass
class PhonemeEvent:
    """One espeak-ng PHONEME event; `char_start` is that of the word event it belongs to."""

    char_start: int
    start: float  # seconds
    name: str


@dataclass
class Synthesis:
    """Raw espeak-ng output for one text."""

    samples: np.ndarray  # [S] int16 at `sampling_rate`
    sampling_rate: int
    words: list[WordEvent]  # in the order spoken
    phonemes: list[PhonemeEvent]  # sounding phonemes only, in the order spoken


def _library_paths() -> tuple[str, str]:
    try:
        import espeakng_loader
    except ImportError as exc:
        raise EspeakUnavailableError(
            f"the synthetic corpus needs espeak-ng from the PyPI package `espeakng-loader`: {INSTALL_HINT}"
        ) from exc
    try:
        return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
    except Exception as exc:  # the package raises RuntimeError when its data folder is missing
        raise EspeakUnavailableError(
            f"`espeakng-loader` is installed but incomplete ({exc}); reinstall it: {INSTALL_HINT}"
        ) from exc


class Espeak:
    """A handle on espeak-ng; use `get_espeak()` for the process-wide instance."""

    def __init__(self) -> None:
        self._lib_path, self._data_path = _library_paths()
        self._lock = threading.Lock()
        self._lib: ctypes.CDLL | None = None
        self._samples: list[bytes] = []
        self._events: list[tuple[int, int, int, int, bytes]] = []
        # The ctypes callback object must outlive every synthesis call that may invoke it.
        self._callback = _CALLBACK(self._on_audio)
        with self._lock:
            self._load()

    def _on_audio(self, wav, num_samples, events) -> int:
        if wav and num_samples > 0:
            self._samples.append(ctypes.string_at(wav, num_samples * 2))  # int16 samples
        if events:
            i = 0
            while events[i].type != _EVENT_LIST_TERMINATED:
                ev = events[i]
                name = ev.id.string if ev.type == _EVENT_PHONEME else b""
                self._events.append((ev.type, ev.text_position, ev.length, ev.audio_position, name))
                i += 1
        return 0  # continue synthesis

    def _load(self) -> None:
        if self._lib is not None:
            self._lib.espeak_Terminate()
            if _unload_library is not None:
                _unload_library(self._lib._handle)
            self._lib = None
        try:
            lib = ctypes.CDLL(self._lib_path, mode=ctypes.RTLD_LOCAL)
        except OSError as exc:
            raise EspeakUnavailableError(
                f"cannot load the espeak-ng library {self._lib_path}: {exc}; {INSTALL_HINT}"
            ) from exc
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        sr = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS,
            _BUFFER_MS,
            self._data_path.encode(),
            _INITIALIZE_DONT_EXIT | _INITIALIZE_PHONEME_EVENTS,
        )
        if sr <= 0:
            raise EspeakUnavailableError(
                f"espeak-ng failed to initialise with data {self._data_path} (returned {sr}); {INSTALL_HINT}"
            )
        if sr != NATIVE_SAMPLING_RATE:
            raise EspeakUnavailableError(f"espeak-ng reports {sr} Hz, expected {NATIVE_SAMPLING_RATE} Hz")
        lib.espeak_SetSynthCallback(self._callback)
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        # Newer than the classic API; without it the noise generator is seeded differently per run.
        self._set_seed = getattr(lib, "espeak_ng_SetRandSeed", None)
        if self._set_seed is not None:
            self._set_seed.argtypes = [ctypes.c_long]
            self._set_seed.restype = None
        self._lib = lib

    def synthesize(self, text: str, voice: str, rate: int = 175, pitch: int = 50, seed: int = 0) -> Synthesis:
        """Synthesise `text` with `voice` (e.g. "en-us+f2") at `rate` words/min and `pitch` (0-100)."""
        if not RATE_MIN <= rate <= RATE_MAX:
            raise ValueError(f"rate {rate} outside espeak-ng's range [{RATE_MIN}, {RATE_MAX}]")
        if not 0 <= pitch <= 100:
            raise ValueError(f"pitch {pitch} outside [0, 100]")
        data = text.encode("utf-8")
        with self._lock:
            self._load()  # fresh library state: the output depends on the arguments only
            lib = self._lib
            assert lib is not None
            if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {voice!r}")
            lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
            lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
            if self._set_seed is not None:
                self._set_seed(int(seed) & 0x7FFFFFFF)
            self._samples, self._events = [], []
            err = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            samples, events = self._samples, self._events
            self._samples, self._events = [], []
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with code {err} for text {text!r}")
        audio = np.frombuffer(b"".join(samples), dtype=np.int16)
        # Positions count characters (not bytes) of the text we passed in, 1-based.
        words = [
            WordEvent(char_start=text_pos - 1, char_length=length, start=ms / 1000.0)
            for etype, text_pos, length, ms, _ in events
            if etype == _EVENT_WORD
        ]
        phonemes = []
        for etype, text_pos, _, ms, raw in events:
            name = raw.decode("utf-8", errors="replace")
            if etype == _EVENT_PHONEME and name not in _SILENT_PHONEMES:
                phonemes.append(PhonemeEvent(char_start=text_pos - 1, start=ms / 1000.0, name=name))
        return Synthesis(samples=audio, sampling_rate=NATIVE_SAMPLING_RATE, words=words, phonemes=phonemes)

    def output_is_history_free(self) -> bool:
        """Whether a text comes out identical after other synthesis calls (it does wherever the
        library can be unloaded and reloaded; elsewhere the corpus is not byte-reproducible)."""
        probe = ("One two three four.", "en-us", 175, 50, 1)
        first = self.synthesize(*probe)
        self.synthesize("Something else, said more slowly.", "en+f3", 120, 30, 2)
        again = self.synthesize(*probe)
        return np.array_equal(first.samples, again.samples)

    def phoneme_counts(self, words: list[str], voice: str) -> list[int]:
        """How many sounding phonemes espeak-ng gives each word when it is read on its own."""
        counts = []
        mode = ord(_PHONEME_SEPARATOR) << 8  # separate phoneme names by "|"
        with self._lock:
            lib = self._lib
            assert lib is not None
            if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {voice!r}")
            for word in words:
                buf = ctypes.c_char_p(word.encode("utf-8"))
                out = lib.espeak_TextToPhonemes(ctypes.byref(buf), _CHARS_UTF8, mode) or b""
                names = (
                    out.decode("utf-8", errors="replace")
                    .replace(" ", _PHONEME_SEPARATOR)
                    .split(_PHONEME_SEPARATOR)
                )
                counts.append(max(1, sum(1 for n in names if n and n not in _SILENT_PHONEMES)))
        return counts


_INSTANCE: Espeak | None = None
_INSTANCE_LOCK = threading.Lock()


def get_espeak() -> Espeak:
    """The process-wide espeak-ng handle (created on first use; raises `EspeakUnavailableError`)."""
    global _INSTANCE
    with _INSTANCE_LOCK:
        if _INSTANCE is None:
            _INSTANCE = Espeak()
        return _INSTANCE


def espeak_available() -> bool:
    """Whether espeak-ng can be loaded here (for skipping tests and choosing defaults)."""
    try:
        get_espeak()
    except EspeakUnavailableError:
        return False
    return True
