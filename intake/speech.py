"""Speech recognition with Vosk: one model per process shared by threads, one recognizer per call.

Two paths feed the same pipeline (decode G.711 -> resample to the model's rate with soxr ->
voice-activity gate -> Vosk):

- streaming: :class:`StreamRecognizer` takes 20-100 ms chunks as they arrive (EAGI fd 3,
  a Twilio media stream) and emits partials while the caller speaks and a final the moment
  they stop (``endpoint_silence_s`` of trailing silence);
- files: :func:`transcribe_file` reads WAV (PCM 16-bit, mu-law, A-law) and raw ``.ulaw``,
  ``.alaw``, ``.sln``, ``.sln16`` recordings and never raises for bad audio.

Why a gate and a pool: a small Vosk model decodes through a lookahead graph whose per-recognizer
cache grows to ~70 MB and costs ~160 ms to build. So recognizers are pooled per model and a call
holds one only while its caller is speaking; calls that wait in silence hold a few kilobytes.
The pool is capped near what the CPU can decode in real time (``VOSK_MAX_RECOGNIZERS``); a call
that starts speaking while all are busy buffers its speech and catches up when one frees.

No model configured (``VOSK_MODEL_PATH`` unset or broken) is a supported mode: everything returns
status ``no_model`` and the reason is logged once.
"""
from __future__ import annotations

import base64
import collections
import json
import logging
import os
import struct
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np

logger = logging.getLogger(__name__)

Status = Literal["ok", "no_model", "unreadable"]
STATUS_OK: Status = "ok"
STATUS_NO_MODEL: Status = "no_model"
STATUS_UNREADABLE: Status = "unreadable"

DEFAULT_MODEL_RATE = 16000  # when the model's conf/mfcc.conf does not say
MAX_FILE_SECONDS = 1800.0  # a caller's description is minutes at most; longer is not a recording of one
FILE_CHUNK_SECONDS = 0.25
ENCODINGS = ("pcm16", "ulaw", "alaw")
UNK = "[unk]"

# Raw telephony files, named the way Asterisk names them.
RAW_FORMATS = {
    ".ulaw": ("ulaw", 8000), ".ul": ("ulaw", 8000), ".mulaw": ("ulaw", 8000), ".pcm": ("ulaw", 8000),
    ".alaw": ("alaw", 8000), ".al": ("alaw", 8000),
    ".sln": ("pcm16", 8000), ".raw": ("pcm16", 8000), ".sln16": ("pcm16", 16000),
}


# --- G.711 ------------------------------------------------------------------------------------

def _ulaw_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def _alaw_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, np.where(seg == 1, t + 0x108, (t + 0x108) << np.maximum(seg - 1, 0)))
    return np.where(a & 0x80, t, -t).astype(np.int16)


ULAW_TO_PCM16 = _ulaw_table()
ALAW_TO_PCM16 = _alaw_table()


def decode_ulaw(data: bytes) -> np.ndarray:
    """G.711 mu-law bytes (Twilio media streams, Asterisk .ulaw) -> int16 samples."""
    return ULAW_TO_PCM16[np.frombuffer(data, dtype=np.uint8)]


def decode_alaw(data: bytes) -> np.ndarray:
    """G.711 A-law bytes (the E1 codec of Chinese networks, Asterisk .alaw) -> int16 samples."""
    return ALAW_TO_PCM16[np.frombuffer(data, dtype=np.uint8)]


def encode_ulaw(samples: np.ndarray) -> bytes:
    """int16 samples -> G.711 mu-law bytes (for prompts and test recordings)."""
    x = np.asarray(samples, dtype=np.int32)
    sign = np.where(x < 0, 0x80, 0)
    mag = np.minimum(np.abs(x), 32635) + 0x84
    exp = np.floor(np.log2(mag)).astype(np.int32) - 7
    mant = (mag >> (exp + 3)) & 0x0F
    return (~(sign | (exp << 4) | mant) & 0xFF).astype(np.uint8).tobytes()


# --- text -------------------------------------------------------------------------------------

def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0x20000 <= o <= 0x2FFFF or 0xF900 <= o <= 0xFAFF


def join_words(words) -> str:
    """Words as Chinese is written: Vosk's Mandarin models put spaces between words (我 要 投诉);
    tickets and the pre-fill want 我要投诉. Spaces stay around Latin, digits and Hangul."""
    out = ""
    for word in words:
        if not word:
            continue
        if out and not (_is_cjk(out[-1]) and _is_cjk(word[0])):
            out += " "
        out += word
    return out


# --- results ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SpeechEvent:
    """What a stream reports: a ``partial`` while the caller speaks, a ``final`` when they stop.

    Times are seconds of stream audio: ``speech_end_s`` is where the voice stopped,
    ``emitted_at_s`` how much audio had arrived when the final was produced.
    """

    kind: Literal["partial", "final"]
    text: str
    confidence: float | None = None
    speech_start_s: float | None = None
    speech_end_s: float | None = None
    emitted_at_s: float = 0.0
    words: tuple[dict, ...] = ()


@dataclass(frozen=True)
class Transcript:
    """The text of a call or recording, and whether there is one (``status``) and why not."""

    text: str
    confidence: float | None
    status: Status
    reason: str | None = None
    duration_s: float | None = None  # audio length
    sample_rate: int | None = None  # of the input
    model_sample_rate: int | None = None  # what the model was fed after resampling
    audio_format: str | None = None  # e.g. "wav/pcm16", "wav/ulaw", "ulaw", "stream/ulaw"
    processing_s: float = 0.0  # wall time spent recognising
    segments: tuple[SpeechEvent, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    def to_dict(self) -> dict:
        d = asdict(self)
        d["segments"] = [{k: v for k, v in s.items() if k != "words"} for s in d["segments"]]
        return d


# --- the model, once per process --------------------------------------------------------------

def read_model_sample_rate(model_path: str | os.PathLike) -> int:
    """``--sample-frequency`` from the model's conf/mfcc.conf, else 16000 (Kaldi's default)."""
    conf = Path(model_path) / "conf" / "mfcc.conf"
    try:
        for line in conf.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("--sample-frequency="):
                return int(float(line.split("=", 1)[1]))
    except (OSError, ValueError):
        pass
    return DEFAULT_MODEL_RATE


def _default_max_recognizers() -> int:
    env = os.environ.get("VOSK_MAX_RECOGNIZERS")
    if env and env.strip().isdigit() and int(env) > 0:
        return int(env)
    return max(2, 2 * (os.cpu_count() or 1))  # ~2 real-time streams per core on a small model


class SpeechModel:
    """A loaded Vosk model, its sample rate, vocabulary checks and the pool of free-form recognizers."""

    def __init__(self, path: str, vosk_model, *, load_s: float = 0.0, max_recognizers: int | None = None):
        self.path = path
        self.vosk_model = vosk_model
        self.sample_rate = read_model_sample_rate(path)
        self.load_s = load_s
        self.has_unk = self.in_vocabulary(UNK)
        self.max_recognizers = max_recognizers or _default_max_recognizers()
        self._idle: list = []
        self._busy = 0
        self._cond = threading.Condition()

    def in_vocabulary(self, word: str) -> bool:
        return self.vosk_model.vosk_model_find_word(word) >= 0

    def new_recognizer(self, grammar_json: str | None = None):
        import vosk

        rec = (vosk.KaldiRecognizer(self.vosk_model, float(self.sample_rate), grammar_json)
               if grammar_json else vosk.KaldiRecognizer(self.vosk_model, float(self.sample_rate)))
        rec.SetWords(True)  # per-word confidence
        return rec

    def acquire(self, block: bool = False, timeout: float | None = None):
        """A free-form recognizer from the pool, or None when all are busy and ``block`` is False."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._busy >= self.max_recognizers:
                if not block:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break  # over the cap rather than lose a caller's words
                self._cond.wait(remaining)
            self._busy += 1
            if self._idle:
                return self._idle.pop()
        try:
            return self.new_recognizer()
        except Exception:
            with self._cond:
                self._busy -= 1
                self._cond.notify()
            raise

    def release(self, rec) -> None:
        rec.Reset()  # nothing of one caller is left for the next
        with self._cond:
            self._busy -= 1
            if len(self._idle) < self.max_recognizers:
                self._idle.append(rec)
            self._cond.notify()

    def warm_up(self) -> None:
        """Build one pooled recognizer now so the first caller does not pay for it."""
        self.release(self.acquire(block=True, timeout=0))

    @property
    def pool_size(self) -> tuple[int, int]:
        """(busy, idle) recognizers."""
        with self._cond:
            return self._busy, len(self._idle)


def _load_vosk_model(path: str):
    import vosk

    vosk.SetLogLevel(-1)  # Kaldi logs every recognizer otherwise
    return vosk.Model(path)


class ModelRegistry:
    """Models by path, each loaded at most once per process, thread-safe; problems logged once."""

    def __init__(self, loader: Callable[[str], object] = _load_vosk_model):
        self._loader = loader
        self._lock = threading.Lock()
        self._models: dict[str, SpeechModel] = {}
        self._failures: dict[str | None, str] = {}
        self.load_counts: collections.Counter[str] = collections.Counter()
        self.configured_path: str | None = None

    def resolve(self, path: str | os.PathLike | None = None) -> str | None:
        """Explicit path, else :func:`configure`, else ``VOSK_MODEL_PATH``; None when none is set."""
        chosen = path or self.configured_path or os.environ.get("VOSK_MODEL_PATH") or None
        return os.path.abspath(os.fspath(chosen)) if chosen else None

    def get(self, path: str | os.PathLike | None = None) -> SpeechModel | None:
        key = self.resolve(path)
        model = self._models.get(key) if key else None
        if model is not None:
            return model
        with self._lock:
            if key in self._models:
                return self._models[key]
            if key in self._failures:
                return None
            if key is None:
                return self._fail(None, "no speech model configured (set VOSK_MODEL_PATH); "
                                        "recordings are kept without transcripts")
            if not os.path.isdir(key):
                return self._fail(key, f"speech model directory {key} does not exist")
            started = time.perf_counter()
            try:
                vosk_model = self._loader(key)
            except Exception as exc:  # vosk raises a bare Exception("Failed to create a model")
                return self._fail(key, f"speech model at {key} failed to load: {exc}")
            self.load_counts[key] += 1
            model = SpeechModel(key, vosk_model, load_s=time.perf_counter() - started)
            self._models[key] = model
            logger.info("speech model %s loaded in %.1f s (%d Hz)", key, model.load_s, model.sample_rate)
            return model

    def failure(self, path: str | os.PathLike | None = None) -> str | None:
        return self._failures.get(self.resolve(path))

    def _fail(self, key: str | None, reason: str) -> None:
        self._failures[key] = reason
        logger.warning("%s", reason)
        return None


_registry = ModelRegistry()


def configure(model_path: str | os.PathLike | None) -> None:
    """Set the model path for this process (e.g. from app config); overrides ``VOSK_MODEL_PATH``."""
    _registry.configured_path = os.fspath(model_path) if model_path else None


def load_model(model_path: str | os.PathLike | None = None) -> SpeechModel | None:
    """The process-wide model (loaded on first use), or None when there is none."""
    return _registry.get(model_path)


def preload(model_path: str | os.PathLike | None = None) -> None:
    """Load the model and one recognizer at worker start-up; logs once if there is no model."""
    model = _registry.get(model_path)
    if model is not None:
        model.warm_up()


def model_available(model_path: str | os.PathLike | None = None) -> bool:
    """True when a model is configured and loads (loads it on first call, then cached)."""
    return _registry.get(model_path) is not None


def model_status(model_path: str | os.PathLike | None = None) -> str:
    """A line for health checks and start-up banners."""
    model = _registry.get(model_path)
    if model is None:
        return _registry.failure(model_path) or "no speech model"
    return f"speech model {model.path} ({model.sample_rate} Hz, loaded in {model.load_s:.1f} s)"


def load_count(model_path: str | os.PathLike | None = None) -> int:
    """How many times this process loaded the model at that path (1 once loaded: never per call)."""
    key = _registry.resolve(model_path)
    return _registry.load_counts[key] if key else 0


# --- grammar ----------------------------------------------------------------------------------

class Grammar:
    """A restricted vocabulary (yes/no, survey digits): phrases the recognizer may return.

    Vosk wants a JSON list; ``ensure_ascii=False`` keeps Chinese words as words (escaped
    ``\\uXXXX`` would never match the model's vocabulary).
    """

    def __init__(self, phrases, model: SpeechModel | None):
        self.phrases = [" ".join(str(p).split()) for p in phrases if str(p).strip()]
        if not self.phrases:
            raise ValueError("grammar needs at least one phrase")
        self.words = {w for p in self.phrases for w in p.split()}
        listed = list(self.phrases)
        if model is not None:
            missing = sorted(w for w in self.words if not model.in_vocabulary(w))
            if missing:
                raise ValueError(f"grammar words not in the model's vocabulary: {', '.join(missing)}")
            if model.has_unk:
                listed.append(UNK)  # anything else becomes [unk] instead of a forced grammar word
        self.json = json.dumps(listed, ensure_ascii=False)

    def restrict(self, words: list[dict]) -> list[dict]:
        """Vosk ignores grammars on static-graph models: map any word outside the grammar to [unk]."""
        return [w if w.get("word") in self.words else {**w, "word": UNK} for w in words]


# --- streaming --------------------------------------------------------------------------------

class _Resampler:
    def __init__(self, in_rate: int, out_rate: int):
        self.passthrough = in_rate == out_rate
        if not self.passthrough:
            import soxr

            self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality="HQ")

    def __call__(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        if self.passthrough:
            return samples
        return self._stream.resample_chunk(samples, last=last)


def _frame_db(frames: np.ndarray) -> np.ndarray:
    rms = np.sqrt(np.mean(frames.astype(np.float32) ** 2, axis=1))
    return 20.0 * np.log10(np.maximum(rms, 1.0) / 32768.0)


class _Utterances:
    """The decoding half of :class:`StreamRecognizer`: what the gate lets through, on a recognizer
    (pooled; one per utterance for a grammar) or buffered in the backlog until one is free."""

    def close(self) -> None:
        """Give the recognizer back (idempotent); ``finish`` does this for you."""
        if self._rec is not None:
            rec, pooled, self._rec = self._rec, self._rec_pooled, None
            if pooled:
                self.model.release(rec)

    def _send(self, frames: list[bytes], events: list[SpeechEvent]) -> None:
        """Audio of the current utterance to the recognizer (or its buffer while none is free)."""
        if not frames:
            return
        utt = self._utt
        if self._rec is None and not self._backlog:
            self._take_recognizer()
        if self._rec is None or self._backlog:
            utt["buffer"].extend(frames)
            if self._backlog and self._take_recognizer():
                events.extend(self._drain_backlog())
            return
        if utt["buffer"]:
            frames = utt["buffer"] + frames
            utt["buffer"] = []
        self._accept(b"".join(frames), utt)

    def _take_recognizer(self) -> bool:
        if self._rec is not None:
            return True
        if self.grammar is not None:  # small and fast to build: one per utterance, not pooled
            self._rec, self._rec_pooled = self.model.new_recognizer(self.grammar.json), False
        else:
            self._rec = self.model.acquire(block=self.block_for_recognizer, timeout=30.0)
            self._rec_pooled = self._rec is not None
        return self._rec is not None

    def _accept(self, data: bytes, utt: dict) -> None:
        self.samples_to_model += len(data) // 2
        if self._rec.AcceptWaveform(data):  # Vosk's own endpoint inside a long utterance
            utt["parts"].append(json.loads(self._rec.Result()))

    def _partial(self) -> list[SpeechEvent]:
        text = json.loads(self._rec.PartialResult()).get("partial", "")
        if self.grammar is not None:
            text = " ".join(w if w in self.grammar.words else UNK for w in text.split())
        else:
            text = join_words(text.split())
        if not text or text == self.last_partial:
            return []
        self.last_partial = text
        event = SpeechEvent("partial", text, None, self._utt["start"], None, self._frames_done / 100)
        if self.on_partial:
            self.on_partial(event)
        return [event]

    def _end_utterance(self) -> list[SpeechEvent]:
        utt, self._utt = self._utt, None
        if self._rec is None or self._backlog or utt["buffer"]:
            self._backlog.append(utt)
            return self._drain_backlog() if self._take_recognizer() else []
        return self._finalise(utt)

    def _drain_backlog(self) -> list[SpeechEvent]:
        events = []
        while self._backlog:
            if not self._take_recognizer():
                return events
            utt = self._backlog.pop(0)
            if utt["buffer"]:
                self._accept(b"".join(utt["buffer"]), utt)
                utt["buffer"] = []
            events.extend(self._finalise(utt))
        if self._utt is not None and self._utt["buffer"] and self._take_recognizer():
            self._accept(b"".join(self._utt["buffer"]), self._utt)
            self._utt["buffer"] = []
        return events

    def _finalise(self, utt: dict) -> list[SpeechEvent]:
        utt["parts"].append(json.loads(self._rec.FinalResult()))
        self.last_partial = ""
        if self._rec_pooled:
            self.close()
        else:
            self._rec = None  # grammar recognizers are not pooled
        words = [w for part in utt["parts"] for w in part.get("result", [])]
        if self.grammar is not None:
            words = self.grammar.restrict(words)
            text = " ".join(w["word"] for w in words)
        else:
            text = join_words(w for p in utt["parts"] for w in p.get("text", "").split())
        if not text:
            return []  # a cough or a click: nothing to report
        event = SpeechEvent("final", text, _mean_conf(words), utt["start"], utt["end"],
                            self._frames_done / 100, tuple(words))
        self.finals.append(event)
        if self.on_final:
            self.on_final(event)
        return [event]


class StreamRecognizer(_Utterances):
    """Live recognition for one call: ``feed()`` chunks as they arrive, ``finish()`` at hang-up.

    ``feed`` returns the newest :class:`SpeechEvent` of that chunk (or None) and calls
    ``on_partial`` / ``on_final``. Not thread-safe: one stream belongs to one call's thread.
    Without a model it accepts audio and reports ``no_model``.
    """

    ONSET_FRAMES = 3  # 30 ms of voice starts an utterance (clicks do not)
    SPEECH_MARGIN_DB = 12.0  # above the tracked noise floor
    SPEECH_FLOOR_DB = -55.0  # never call quieter than this speech

    def __init__(self, sample_rate: int = 8000, encoding: str = "pcm16", *,
                 grammar=None, on_partial: Callable[[SpeechEvent], None] | None = None,
                 on_final: Callable[[SpeechEvent], None] | None = None,
                 endpoint_silence_s: float = 0.12, preroll_s: float = 0.3, partials: bool = True,
                 partial_interval_s: float = 0.2, model_path: str | os.PathLike | None = None,
                 model: SpeechModel | None = None, block_for_recognizer: bool = False):
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, not {encoding!r}")
        if not 4000 <= int(sample_rate) <= 192000:
            raise ValueError(f"sample_rate {sample_rate} is not an audio rate")
        self.sample_rate = int(sample_rate)
        self.encoding = encoding
        self.model = model if model is not None else load_model(model_path)
        self.reason = None if self.model else (_registry.failure(model_path) or "no speech model")
        self.model_sample_rate = self.model.sample_rate if self.model else DEFAULT_MODEL_RATE
        self.grammar = Grammar(grammar, self.model) if grammar is not None else None
        self.on_partial, self.on_final = on_partial, on_final
        self.partials = partials
        self.block_for_recognizer = block_for_recognizer
        rate = self.model_sample_rate
        self._frame = rate // 100  # 10 ms VAD frames at the model's rate
        self._endpoint_frames = max(1, round(endpoint_silence_s * 100))
        self._partial_every = max(1, round(partial_interval_s * 100))
        self._resample = _Resampler(self.sample_rate, rate)
        self._odd = b""  # half a pcm16 sample left from the last chunk
        self._rem = np.zeros(0, dtype=np.int16)  # less than one VAD frame
        self._preroll: collections.deque[bytes] = collections.deque(maxlen=max(1, round(preroll_s * 100)))
        self._levels: collections.deque[float] = collections.deque(maxlen=150)
        self._voiced_run = 0
        self._frames_done = 0  # 10 ms frames gated so far
        self.input_samples = 0
        self.samples_to_model = 0  # what Vosk was actually fed (after resampling and gating)
        self._utt: dict | None = None  # the utterance in progress
        self._backlog: list[dict] = []  # ended utterances waiting for a free recognizer
        self._rec = None
        self._rec_pooled = False
        self.finals: list[SpeechEvent] = []
        self.last_partial = ""
        self._wall = 0.0
        self._finished: Transcript | None = None

    # public ----------------------------------------------------------------------------------

    @property
    def text(self) -> str:
        """Everything recognised so far (finals only)."""
        return join_words(e.text for e in self.finals)

    @property
    def audio_s(self) -> float:
        return self.input_samples / self.sample_rate

    def feed(self, chunk: bytes) -> SpeechEvent | None:
        """Take 20-100 ms of audio in this stream's encoding; return the newest event, if any."""
        if self._finished is not None:
            raise RuntimeError("stream already finished")
        started = time.perf_counter()
        samples = self._decode(chunk)
        self.input_samples += len(samples)
        if self.model is None or len(samples) == 0:
            return None
        events = self._gate(self._resample(samples))
        self._wall += time.perf_counter() - started
        return events[-1] if events else None

    def finish(self) -> Transcript:
        """End of the call or recording: flush, finalise any open utterance, free the recognizer."""
        if self._finished is not None:
            return self._finished
        started = time.perf_counter()
        fmt = f"stream/{self.encoding}"
        if self.model is None:
            self._finished = Transcript("", None, STATUS_NO_MODEL, self.reason, self.audio_s,
                                        self.sample_rate, None, fmt)
            return self._finished
        try:
            if not self._resample.passthrough:
                self._gate(self._resample(np.zeros(0, dtype=np.int16), last=True))
            if len(self._rem):  # pad the last partial frame so no voice is dropped
                self._gate(np.zeros(self._frame - len(self._rem), dtype=np.int16))
            if self._utt is not None:
                self._end_utterance()
            self.block_for_recognizer = True
            self._drain_backlog()
        finally:
            self.close()
        self._wall += time.perf_counter() - started
        words = [w for e in self.finals for w in e.words]
        self._finished = Transcript(self.text, _mean_conf(words), STATUS_OK, None, self.audio_s,
                                    self.sample_rate, self.model_sample_rate, fmt, self._wall,
                                    tuple(self.finals))
        return self._finished

    def __enter__(self) -> "StreamRecognizer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # pipeline --------------------------------------------------------------------------------

    def _decode(self, chunk: bytes) -> np.ndarray:
        if self.encoding == "ulaw":
            return decode_ulaw(chunk)
        if self.encoding == "alaw":
            return decode_alaw(chunk)
        data = self._odd + bytes(chunk)
        cut = len(data) & ~1
        self._odd = data[cut:]
        return np.frombuffer(data[:cut], dtype="<i2")

    def _gate(self, samples: np.ndarray) -> list[SpeechEvent]:
        """Voice-activity gate on 10 ms frames: decode only utterances (with pre-roll)."""
        if len(self._rem):
            samples = np.concatenate([self._rem, samples])
        n = len(samples) // self._frame
        self._rem = samples[n * self._frame:]
        if n == 0:
            return []
        frames = samples[: n * self._frame].reshape(n, self._frame)
        levels = _frame_db(frames)
        events: list[SpeechEvent] = []
        if self._backlog and self._take_recognizer():  # a recognizer freed up: catch up first
            events.extend(self._drain_backlog())
        pending: list[bytes] = []
        for i in range(n):
            self._frames_done += 1
            voiced = self._is_voice(float(levels[i]))
            frame = frames[i].tobytes()
            utt = self._utt
            if utt is None:
                self._preroll.append(frame)
                self._voiced_run = self._voiced_run + 1 if voiced else 0
                if self._voiced_run >= self.ONSET_FRAMES:
                    k = len(self._preroll)
                    utt = self._utt = {"start": (self._frames_done - min(k, self._voiced_run)) / 100,
                                       "end": self._frames_done / 100, "silent": 0, "since_partial": 0,
                                       "parts": [], "buffer": []}
                    pending.extend(self._preroll)
                    self._preroll.clear()
                continue
            pending.append(frame)
            utt["since_partial"] += 1
            if voiced:
                utt["silent"] = 0
                utt["end"] = self._frames_done / 100
            else:
                utt["silent"] += 1
                if utt["silent"] >= self._endpoint_frames:
                    self._send(pending, events)
                    pending = []
                    events.extend(self._end_utterance())
                    self._voiced_run = 0
                    continue
            if self.partials and utt["since_partial"] >= self._partial_every:
                utt["since_partial"] = 0
                self._send(pending, events)
                pending = []
                if self._rec is not None:
                    events.extend(self._partial())
        if pending:
            self._send(pending, events)
        return events

    def _is_voice(self, db: float) -> bool:
        # The noise floor is the quietest frame of the last 1.5 s: it follows line noise up and
        # down, while speech always has quieter moments between syllables within that window.
        self._levels.append(db)
        return db > max(min(self._levels) + self.SPEECH_MARGIN_DB, self.SPEECH_FLOOR_DB)


def _mean_conf(words: list[dict]) -> float | None:
    confs = [float(w["conf"]) for w in words if "conf" in w]
    return round(sum(confs) / len(confs), 4) if confs else None


# --- front-end helpers ------------------------------------------------------------------------

def twilio_media_payload(message: str | bytes | dict) -> bytes | None:
    """The mu-law audio of a Twilio media-stream ``media`` message (None for other events)."""
    if not isinstance(message, dict):
        message = json.loads(message)
    if message.get("event") != "media":
        return None
    return base64.b64decode(message["media"]["payload"])


def eagi_audio(fd: int = 3, chunk_ms: int = 20, sample_rate: int = 8000) -> Iterator[bytes]:
    """Chunks of the caller's audio from Asterisk EAGI (16-bit 8 kHz on fd 3) until hang-up."""
    size = sample_rate * 2 * chunk_ms // 1000
    while True:
        try:
            data = os.read(fd, size)
        except OSError:
            return
        if not data:
            return
        yield data


# --- files ------------------------------------------------------------------------------------

class UnreadableAudio(Exception):
    """The reason a recording cannot be transcribed, for people."""


@dataclass(frozen=True)
class AudioInfo:
    path: str
    container: str  # "wav" or "raw"
    encoding: str  # pcm16 | ulaw | alaw
    sample_rate: int
    channels: int
    data_offset: int
    data_bytes: int

    @property
    def bytes_per_frame(self) -> int:
        return (2 if self.encoding == "pcm16" else 1) * self.channels

    @property
    def duration_s(self) -> float:
        return self.data_bytes / self.bytes_per_frame / self.sample_rate

    @property
    def audio_format(self) -> str:
        return f"wav/{self.encoding}" if self.container == "wav" else self.encoding


_WAV_TAGS = {1: "pcm", 6: "alaw", 7: "ulaw", 0x31: "GSM 6.10 (WAV49)", 3: "32-bit float", 0x11: "IMA ADPCM",
             0x55: "MP3"}


def probe_audio(path: str | os.PathLike, max_seconds: float = MAX_FILE_SECONDS) -> AudioInfo:
    """Read and check the header of a recording; raises :class:`UnreadableAudio` with the reason."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UnreadableAudio(f"cannot open recording: {exc.strerror or exc}") from None
    if not os.path.isfile(path):
        raise UnreadableAudio("not a regular file")
    if st.st_size == 0:
        raise UnreadableAudio("empty file (0 bytes)")
    ext = os.path.splitext(path)[1].lower()
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if head[:4] == b"RIFF" or ext == ".wav" or ext not in RAW_FORMATS:
                if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                    what = "not a WAV file" if ext == ".wav" else f"unsupported format {ext or '(no extension)'}"
                    raise UnreadableAudio(f"{what}: starts with {head[:8]!r}; expected WAV (RIFF/WAVE) "
                                          f"or raw {', '.join(sorted(RAW_FORMATS))}")
                info = _probe_wav(f, path, st.st_size)
            else:
                info = _probe_raw(f, path, ext, st.st_size)
    except OSError as exc:
        raise UnreadableAudio(f"cannot read recording: {exc.strerror or exc}") from None
    if info.data_bytes < info.bytes_per_frame:
        raise UnreadableAudio("no audio in the recording (0 samples)")
    if info.duration_s > max_seconds:
        raise UnreadableAudio(f"recording too long: {info.duration_s:.0f} s (limit {max_seconds:.0f} s)")
    return info


def _probe_wav(f, path: str, size: int) -> AudioInfo:
    fmt = None
    pos = 12
    while True:
        f.seek(pos)
        header = f.read(8)
        if len(header) < 8:
            if fmt is None:
                raise UnreadableAudio("truncated WAV: no 'fmt ' chunk before the end of the file")
            raise UnreadableAudio("truncated WAV: no 'data' chunk before the end of the file")
        cid, clen = struct.unpack("<4sI", header)
        if cid == b"fmt ":
            body = f.read(clen)
            if clen < 16 or len(body) < 16:
                raise UnreadableAudio("truncated WAV: 'fmt ' chunk is cut short")
            tag, channels, rate, _, align, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == 0xFFFE and len(body) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the real tag is in the GUID
                tag = struct.unpack("<H", body[24:26])[0]
            fmt = (tag, channels, rate, bits)
        elif cid == b"data":
            if fmt is None:
                raise UnreadableAudio("bad WAV: 'data' comes before 'fmt '")
            tag, channels, rate, bits = fmt
            encoding = {(1, 16): "pcm16", (7, 8): "ulaw", (6, 8): "alaw"}.get((tag, bits))
            if encoding is None:
                name = _WAV_TAGS.get(tag, f"format tag {tag}")
                name = f"{bits}-bit PCM" if tag == 1 else name
                raise UnreadableAudio(f"unsupported WAV encoding {name}; "
                                      "use 16-bit PCM, mu-law or A-law (8 or 16 kHz)")
            if channels < 1 or not 8000 <= rate <= 48000:
                raise UnreadableAudio(f"unsupported WAV: {channels} channel(s) at {rate} Hz "
                                      "(need 1-2 channels at 8000-48000 Hz)")
            offset = pos + 8
            available = size - offset
            if clen in (0, 0xFFFFFFFF) and available > 0:  # header of a recording still being written
                clen = available
            if clen > available:
                raise UnreadableAudio(f"truncated WAV: header declares {clen} bytes of audio, "
                                      f"the file holds {max(available, 0)}")
            info = AudioInfo(path, "wav", encoding, rate, channels, offset, clen)
            if clen % info.bytes_per_frame:
                raise UnreadableAudio("truncated WAV: audio ends in the middle of a sample")
            return info
        pos += 8 + clen + (clen & 1)


def _probe_raw(f, path: str, ext: str, size: int) -> AudioInfo:
    encoding, rate = RAW_FORMATS[ext]
    f.seek(0)
    sample = f.read(4096)
    printable = sum(1 for b in sample if 32 <= b < 127 or b in (9, 10, 13))
    if len(sample) >= 64 and printable > 0.95 * len(sample):
        raise UnreadableAudio(f"not audio: {ext} file holds text")
    if encoding == "pcm16" and size % 2:
        raise UnreadableAudio("truncated recording: odd number of bytes for 16-bit audio")
    return AudioInfo(path, "raw", encoding, rate, 1, 0, size)


def _read_chunks(info: AudioInfo) -> Iterator[np.ndarray]:
    step = max(1, int(info.sample_rate * FILE_CHUNK_SECONDS)) * info.bytes_per_frame
    remaining = info.data_bytes
    with open(info.path, "rb") as f:
        f.seek(info.data_offset)
        while remaining > 0:
            data = f.read(min(step, remaining))
            if not data:
                raise UnreadableAudio(f"recording ended early ({remaining} bytes missing)")
            remaining -= len(data)
            data = data[: len(data) - len(data) % info.bytes_per_frame]
            if info.encoding == "ulaw":
                samples = decode_ulaw(data)
            elif info.encoding == "alaw":
                samples = decode_alaw(data)
            else:
                samples = np.frombuffer(data, dtype="<i2")
            if info.channels > 1:  # a two-leg recording: both sides into one voice track
                samples = samples.reshape(-1, info.channels).mean(axis=1).astype(np.int16)
            yield samples


def transcribe_file(path: str | os.PathLike, *, grammar=None, model_path: str | os.PathLike | None = None,
                    max_seconds: float = MAX_FILE_SECONDS) -> Transcript:
    """Transcribe a recording. Never raises for bad audio: status ``unreadable`` with a reason.

    The header is checked first, so a corrupt recording is ``unreadable`` even without a model;
    a good recording without a model is ``no_model`` (with its duration).
    """
    started = time.perf_counter()
    try:
        info = probe_audio(path, max_seconds)
    except UnreadableAudio as exc:
        return Transcript("", None, STATUS_UNREADABLE, str(exc), processing_s=time.perf_counter() - started)
    model = load_model(model_path)
    if model is None:
        return Transcript("", None, STATUS_NO_MODEL, _registry.failure(model_path) or "no speech model",
                          info.duration_s, info.sample_rate, None, info.audio_format,
                          time.perf_counter() - started)
    try:
        stream = StreamRecognizer(info.sample_rate, "pcm16", grammar=grammar, partials=False, model=model,
                                  block_for_recognizer=True)
        try:
            for samples in _read_chunks(info):
                stream.feed(samples.tobytes())
            result = stream.finish()
        finally:
            stream.close()
    except UnreadableAudio as exc:
        return Transcript("", None, STATUS_UNREADABLE, str(exc), info.duration_s, info.sample_rate,
                          model.sample_rate, info.audio_format, time.perf_counter() - started)
    except OSError as exc:
        return Transcript("", None, STATUS_UNREADABLE, f"cannot read recording: {exc.strerror or exc}",
                          info.duration_s, info.sample_rate, model.sample_rate, info.audio_format,
                          time.perf_counter() - started)
    return Transcript(result.text, result.confidence, STATUS_OK, None, info.duration_s, info.sample_rate,
                      model.sample_rate, info.audio_format, time.perf_counter() - started, result.segments)


__all__ = [
    "AudioInfo", "Grammar", "ModelRegistry", "SpeechEvent", "SpeechModel", "StreamRecognizer", "Transcript",
    "UnreadableAudio", "configure", "decode_alaw", "decode_ulaw", "eagi_audio", "encode_ulaw", "load_count",
    "join_words", "load_model", "model_available", "model_status", "preload", "probe_audio", "read_model_sample_rate",
    "transcribe_file", "twilio_media_payload",
]
