"""Prompt audio for Asterisk: every text callers may hear, as 16-bit PCM mono 8 kHz WAV.

    python -m ivr.prompts render [--rules FILE] [--out DIR] [--recorded DIR] [--prune] [--moh DIR]
    python -m ivr.prompts list   [--rules FILE]          # id and text of every prompt

A prompt is named by a hash of its text (and the voice), so an edited text gets a new file
and an unchanged one is never rendered twice. Synthesis is espeak-ng's ``cmn-latn-pinyin``
voice fed tone-numbered pinyin from pypinyin (DESIGN.md §5: ``-v cmn`` misreads characters);
digits are read one by one, 1 as 幺, the way service numbers are said (幺二三四五).

Admins may record a prompt instead: drop ``<id>.wav`` (any rate/channels sox reads; the id
comes from ``list`` or ``OUT/index.tsv``) into the recorded folder; it wins over synthesis
and is converted to the format Asterisk plays. Removing it brings the synthetic one back.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

VOICE = "espeak-ng:cmn-latn-pinyin:s150"
DEFAULT_OUT = Path(os.environ.get("HOTLINE_PROMPTS", "/var/lib/asterisk/sounds/hotline"))
_DIGIT_WORDS = dict(zip("0123456789", "零幺二三四五六七八九"))
_PAUSE = {"，": ",", "、": ",", "；": ",", "：": ",", ",": ",", "。": ".", "！": ".", "？": ".", ".": ".",
          "!": ".", "?": ".", ";": ",", ":": ","}


def prompt_id(text: str) -> str:
    return hashlib.sha1(f"{VOICE}\n{text}".encode("utf-8")).hexdigest()[:16]


def sound_path(prompt_dir: str, text: str) -> str:
    """What STREAM FILE is given for a text: the prompt's path without extension."""
    return f"{prompt_dir.rstrip('/')}/{prompt_id(text)}"


def to_pinyin(text: str) -> str:
    """Tone-numbered pinyin espeak-ng's ``cmn-latn-pinyin`` voice reads as Mandarin."""
    from pypinyin import Style, lazy_pinyin

    text = re.sub(r"[0-9]", lambda m: _DIGIT_WORDS[m.group()], text)
    words = []
    for token in lazy_pinyin(text, style=Style.TONE3, neutral_tone_with_five=True, errors=lambda s: list(s)):
        if token in _PAUSE:
            if words and words[-1][-1] not in ",.":
                words[-1] += _PAUSE[token]
        elif token.strip() and re.match(r"^[a-zü]+[1-5]$", token):
            words.append(token)
        elif token.strip() and token.isascii() and token.isalpha():
            words.append(token.lower())  # a Latin word (e.g. "APP") is spelled out by espeak
    return " ".join(words)


def rules_prompts(rules) -> list[str]:
    """Every text the rules may have a caller hear (greetings, transition, after, emergency notices)."""
    texts = [rules.hotline.greeting] if rules.hotline.greeting else []
    for line in rules.lines.values():
        if line.greeting:
            texts.append(line.greeting)
        if line.transition is not None and not line.transition.audio:
            texts.append(line.transition.prompt)
        if line.after_text:
            texts.append(line.after_text)
    for e in rules.emergency:
        texts.append(rules.emergency_notice.format(number=e.number, name=e.name))
    return texts


def all_prompts(rules) -> list[str]:
    from ivr.flow import fixed_prompts

    return list(dict.fromkeys(rules_prompts(rules) + fixed_prompts()))


def _synthesize(text: str, dest: Path) -> None:
    tmp = dest.with_suffix(".tmp.wav")
    espeak = subprocess.run(["espeak-ng", "-v", "cmn-latn-pinyin", "-s", "150", "--stdout", to_pinyin(text)],
                            capture_output=True, check=True)
    subprocess.run(["sox", "-V1", "-D", "-t", "wav", "-", "-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer",
                    str(tmp), "vol", "0.8"], input=espeak.stdout, capture_output=True, check=True)
    os.replace(tmp, dest)


def _convert(source: Path, dest: Path) -> None:
    tmp = dest.with_suffix(".tmp.wav")
    subprocess.run(["sox", "-V1", "-D", str(source), "-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer",
                    str(tmp)], capture_output=True, check=True)
    os.replace(tmp, dest)


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def render(texts, out: Path, recorded: Path | None = None, prune: bool = False, jobs: int = 2,
           progress=sys.stderr) -> dict:
    """Bring ``out`` up to date with ``texts``; returns counts of what was done."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recorded = Path(recorded) if recorded else out / "recorded"
    manifest_path = out / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text("utf-8"))
    except (OSError, ValueError):
        manifest = {}
    wanted = {prompt_id(t): t for t in texts}
    todo = []
    counts = {"total": len(wanted), "synthesized": 0, "recorded": 0, "unchanged": 0, "pruned": 0}
    for pid, text in wanted.items():
        dest = out / f"{pid}.wav"
        rec = next((p for p in sorted(recorded.glob(f"{pid}.*")) if p.is_file()), None) if recorded.is_dir() else None
        source = f"recorded:{rec.name}:{_stamp(rec)}" if rec else VOICE
        known = manifest.get(pid)
        if dest.exists() and known and known.get("source") == source:
            counts["unchanged"] += 1
            continue
        todo.append((pid, text, dest, rec, source))

    def work(item):
        pid, text, dest, rec, source = item
        if rec:
            _convert(rec, dest)
        else:
            _synthesize(text, dest)
        return item

    done = 0
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        for pid, text, dest, rec, source in pool.map(work, todo):
            done += 1
            manifest[pid] = {"text": text, "source": source}
            counts["recorded" if rec else "synthesized"] += 1
            if progress:
                what = "recorded" if rec else "synthesized"
                print(f"[{done}/{len(todo)}] {what} {pid} {text[:24]}", file=progress, flush=True)
    if prune:
        for pid in list(manifest):
            if pid not in wanted:
                (out / f"{pid}.wav").unlink(missing_ok=True)
                del manifest[pid]
                counts["pruned"] += 1
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, ensure_ascii=False, indent=1, sort_keys=True), "utf-8")
    os.replace(tmp, manifest_path)
    (out / "index.tsv").write_text("".join(f"{pid}\t{t}\n" for pid, t in sorted(wanted.items())), "utf-8")
    return counts


HOLD_MUSIC = "hotline-hold.wav"


def render_hold_music(out: Path, seconds: float = 24.0) -> Path:
    """The project's own hold music (music-on-hold class ``hotline``): a quiet, slow pentatonic
    melody as 16-bit PCM mono 8 kHz WAV, made here so that no site depends on a sound package.
    An admin's own files dropped beside it (same format) are played too (``sort=alpha``)."""
    import math
    import wave

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dest = out / HOLD_MUSIC
    if dest.exists():
        return dest
    rate, note_s = 8000, 0.75
    melody = [392.0, 440.0, 523.3, 587.3, 523.3, 440.0, 392.0, 329.6,
              293.7, 329.6, 392.0, 440.0, 392.0, 329.6, 293.7, 261.6]
    frames = bytearray()
    total = int(seconds / note_s)
    n = int(rate * note_s)
    for i in range(total):
        f = melody[i % len(melody)]
        for k in range(n):
            env = min(1.0, k / 400) * min(1.0, (n - k) / 1600)  # soft attack, long release
            v = env * (0.6 * math.sin(2 * math.pi * f * k / rate) + 0.2 * math.sin(4 * math.pi * f * k / rate))
            frames += int(v * 6000).to_bytes(2, "little", signed=True)
    tmp = dest.with_suffix(".tmp")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))
    os.replace(tmp, dest)
    return dest


def main(argv=None) -> int:
    from call_routing.rules import DEFAULT_RULES_PATH, RulesError, load_rules

    parser = argparse.ArgumentParser(prog="python -m ivr.prompts", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="render every prompt that is missing or changed")
    r.add_argument("--out", default=str(DEFAULT_OUT), help="Asterisk sounds folder for the prompts (default %(default)s)")
    r.add_argument("--recorded", help="folder of admin recordings named <id>.wav (default OUT/recorded)")
    r.add_argument("--prune", action="store_true", help="delete prompts no rule uses any more")
    r.add_argument("--jobs", type=int, default=2)
    r.add_argument("--moh", help="also write the hold music (class hotline) into this folder")
    ls = sub.add_parser("list", help="print id and text of every prompt")
    for p in (r, ls):
        p.add_argument("--rules", default=os.environ.get("RULES_PATH") or str(DEFAULT_RULES_PATH))
    args = parser.parse_args(argv)
    try:
        rules = load_rules(args.rules)
    except RulesError as exc:
        print(exc, file=sys.stderr)
        return 1
    texts = all_prompts(rules)
    if args.cmd == "list":
        for t in texts:
            print(f"{prompt_id(t)}\t{t}")
        return 0
    for tool in ("espeak-ng", "sox"):
        if not shutil.which(tool):
            print(f"{tool} is not installed (apt-get install espeak-ng sox)", file=sys.stderr)
            return 1
    counts = render(texts, Path(args.out), args.recorded, args.prune, args.jobs)
    if args.moh:
        print(f"hold music: {render_hold_music(Path(args.moh))}")
    print(f"{counts['total']} prompts in {args.out}: {counts['synthesized']} synthesized, "
          f"{counts['recorded']} from recordings, {counts['unchanged']} unchanged, {counts['pruned']} pruned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
