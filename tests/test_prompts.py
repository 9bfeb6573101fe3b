"""Prompt audio: every text renders to what Asterisk plays, once; admins' recordings win."""
from __future__ import annotations

import io
import subprocess
import sys
import wave
from pathlib import Path

from ivr import prompts

ROOT = Path(__file__).resolve().parent.parent


def test_service_numbers_are_read_digit_by_digit_with_yao_for_one():
    assert prompts.to_pinyin("请拨打12345") == "qing3 bo1 da3 yao1 er4 san1 si4 wu3"
    assert prompts.to_pinyin("您好，再见。").endswith("hao3, zai4 jian4.")


def test_every_rules_prompt_and_flow_text_is_listed(rules):
    texts = prompts.all_prompts(rules)
    assert rules.lines["12301"].transition.prompt in texts
    assert rules.emergency_notice.format(number="120", name="医疗急救") in texts
    assert "您前面还有" in texts and "九十九" in texts


def test_render_makes_8khz_16bit_mono_wav_and_rebuilds_only_what_changed(tmp_path):
    out = tmp_path / "sounds"
    log = io.StringIO()
    counts = prompts.render(["您好，这里是12345。", "请稍候。"], out, progress=log)
    assert counts["synthesized"] == 2 and "[2/2]" in log.getvalue()
    for text in ("您好，这里是12345。", "请稍候。"):
        with wave.open(str(out / f"{prompts.prompt_id(text)}.wav")) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getcomptype()) == (8000, 1, 2, "NONE")
            assert w.getnframes() > 2000  # real speech, not an empty file
    counts = prompts.render(["您好，这里是12345。", "请稍候。", "再见。"], out, progress=None)
    assert (counts["synthesized"], counts["unchanged"]) == (1, 2)


def test_an_admin_recording_wins_and_removing_it_brings_back_the_synthetic_prompt(tmp_path):
    out, text = tmp_path / "sounds", "欢迎致电12345。"
    prompts.render([text], out, progress=None)
    pid = prompts.prompt_id(text)
    synthetic = (out / f"{pid}.wav").read_bytes()
    (out / "recorded").mkdir()
    # an admin's studio recording: 44.1 kHz stereo, converted on the way in
    subprocess.run(["sox", "-n", "-r", "44100", "-c", "2", "-b", "16", str(out / "recorded" / f"{pid}.wav"),
                    "synth", "0.5", "sine", "440"], check=True)
    counts = prompts.render([text], out, progress=None)
    assert counts["recorded"] == 1
    with wave.open(str(out / f"{pid}.wav")) as w:
        assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (8000, 1, 4000)
    assert prompts.render([text], out, progress=None)["unchanged"] == 1
    (out / "recorded" / f"{pid}.wav").unlink()
    assert prompts.render([text], out, progress=None)["synthesized"] == 1
    assert (out / f"{pid}.wav").read_bytes() == synthetic


def test_the_command_lists_ids_for_admins(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ivr.prompts", "list"], capture_output=True, text=True, cwd=ROOT,
                            check=True)
    lines = result.stdout.splitlines()
    assert any(line.endswith("您前面还有") for line in lines)
    assert all(len(line.split("\t")[0]) == 16 for line in lines)
