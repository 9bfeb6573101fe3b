#!/usr/bin/env bash
# Make .venv ready: a Python 3.11–3.13 virtualenv with requirements.txt installed.
#   scripts/setup.sh          what ./run.sh needs (prompt audio, nginx)
#   scripts/setup.sh --test   and what ./test.sh needs besides (browser, load generator, sipp, …)
# Safe to run again: it reinstalls only when requirements.txt changed. On a fresh
# Debian/Ubuntu machine it installs the few system packages it needs (as root or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
TEST=0
[ "${1:-}" = "--test" ] && TEST=1

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))'; then
      PY=$cand; break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "setup: Python 3.11, 3.12 or 3.13 is required (none found on PATH; or set PYTHON=/path/to/python3)" >&2
  exit 1
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }
apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  # wait for another apt/dpkg (unattended upgrades on a fresh machine) instead of failing at once
  as_root apt-get -o DPkg::Lock::Timeout=300 update -qq &&
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq "$@" >/dev/null
}

# System tools; each is optional when its package cannot be had.
# For ./run.sh: espeak-ng, sox (prompt audio); nginx-light (the buffering proxy in front of the
# web app: slow clients hold no worker).
missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v sox >/dev/null 2>&1 || missing+=(sox)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
# For ./test.sh only: chromium, chromium-driver, a CJK font (console end-to-end tests); wrk (the
# load generator of bench.webhooks); the real-PBX tests (docs/asterisk.md): Asterisk's core sounds (beep, silence), sipp as carrier
# trunk and agent phone, and the runtime libraries of the prebuilt Asterisk beside the checkout
if [ "$TEST" = 1 ]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
  [ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || missing+=(fonts-wqy-microhei)
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
  [ -e /usr/share/asterisk/sounds/en_US_f_Allison/beep.gsm ] || missing+=(asterisk-core-sounds-en-gsm)
  command -v sipp >/dev/null 2>&1 || missing+=(sip-tester)
  if [ -x ../shared/asterisk/sbin/asterisk ] && command -v dpkg >/dev/null 2>&1; then
    for lib in libxslt1.1 libjansson4 libedit2 libicu72 libsqlite3-0 libxml2 libuuid1 libssl3 libsrtp2-1; do
      dpkg -s "$lib" >/dev/null 2>&1 || missing+=("$lib")
    done
  fi
fi
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}" || echo "setup: could not install ${missing[*]} (prompt audio, browser tests, the real-PBX tests and bench.webhooks use them)" >&2
fi

if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    apt_install "python3.$("$PY" -c 'import sys; print(sys.version_info[1])')-venv" || apt_install python3-venv || true
    "$PY" -m venv .venv
  fi
fi

stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
  echo "$want" > "$stamp"
fi
