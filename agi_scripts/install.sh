#!/usr/bin/env bash
# Install (or upgrade) the 12345 gateway's dialplan, prompts and hold music into an Asterisk,
# then reload what changed. Safe to run again after every upgrade or rules edit.
#
#   agi_scripts/install.sh [--etc /etc/asterisk] [--sounds /var/lib/asterisk/sounds]
#                          [--moh /var/lib/asterisk/moh] [--agi agi://127.0.0.1:4573]
#                          [--ami-secret SECRET] [--audiosocket HOST:PORT|off] [--no-reload]
#
# What it does (docs/asterisk.md, "Install"):
#   ETC/hotline/extensions.conf, confbridge.conf, features.conf, musiconhold.conf: the project's
#       snippets (agi_scripts/*.sample), replaced at every run: do not edit them there;
#   ETC/hotline/globals.conf, queues.conf: the site's settings (FastAGI address, trunks, fallback
#       seats), written once from the samples and then left to the admin;
#   ETC/hotline/manager.conf (with --ami-secret): the product's AMI user "hotline";
#   --audiosocket: HOTLINE_AUDIOSOCKET in ETC/hotline/globals.conf (also in an existing one):
#       waiting callers heard live by the product's AudioSocket server; off: recorded instead;
#   one '#include "hotline/X.conf"' line in each of ETC's extensions, confbridge, features,
#       musiconhold, queues (and manager) .conf;
#   SOUNDS/hotline: every prompt (python -m ivr.prompts render), MOH/hotline: the hold music;
#   reloads: dialplan, features, app_confbridge, app_queue, moh (and manager).
# Environment: PYTHON (default: the checkout's .venv), RULES_PATH (the rules whose prompts are
# rendered), ASTERISK_RX (how to run a CLI command, default "asterisk -rx").
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
etc=/etc/asterisk
sounds=/var/lib/asterisk/sounds
moh=/var/lib/asterisk/moh
agi=agi://127.0.0.1:4573
ami_secret=
audiosocket=
reload=1
while [ $# -gt 0 ]; do
  case $1 in
    --etc) etc=$2; shift 2 ;;
    --sounds) sounds=$2; shift 2 ;;
    --moh) moh=$2; shift 2 ;;
    --agi) agi=$2; shift 2 ;;
    --ami-secret) ami_secret=$2; shift 2 ;;
    --audiosocket) audiosocket=$2; shift 2 ;;
    --no-reload) reload=0; shift ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
python=${PYTHON:-$top/.venv/bin/python}
[ -d "$etc" ] || { echo "install.sh: $etc is not a directory (Asterisk's configuration, --etc)" >&2; exit 1; }
case $agi in agi://*|hagi://*) ;; *) echo "install.sh: --agi must be agi://HOST:PORT or hagi://NAME" >&2; exit 1 ;; esac
case $audiosocket in
  ''|off|[A-Za-z0-9]*:[0-9]*) ;;
  *) echo "install.sh: --audiosocket must be HOST:PORT (the product's AudioSocket server) or off" >&2; exit 1 ;;
esac
case $audiosocket in *[!A-Za-z0-9.:-]*) echo "install.sh: --audiosocket: HOST:PORT, letters, digits and .:- only" >&2; exit 1 ;; esac
case $ami_secret in *[![:alnum:]_.@%+=-]*) echo "install.sh: --ami-secret: letters, digits and _.@%+=- only" >&2; exit 1 ;; esac

mkdir -p "$etc/hotline"
put() {  # put SOURCE DEST: write atomically
  local tmp; tmp=$(mktemp "$2.XXXXXX"); cat "$1" > "$tmp"; chmod 644 "$tmp"; mv -f "$tmp" "$2"
}
put "$here/extensions.conf.sample" "$etc/hotline/extensions.conf"
put "$here/confbridge.conf.sample" "$etc/hotline/confbridge.conf"
put "$here/features.conf.sample" "$etc/hotline/features.conf"
sed "s|^directory=.*|directory=$moh/hotline|" "$here/musiconhold.conf.sample" > "$etc/hotline/.moh.tmp"
put "$etc/hotline/.moh.tmp" "$etc/hotline/musiconhold.conf"; rm -f "$etc/hotline/.moh.tmp"
if [ ! -e "$etc/hotline/globals.conf" ]; then
  sed "s|^HOTLINE_AGI=agi://127.0.0.1:4573 |HOTLINE_AGI=$agi |" "$here/globals.conf.sample" > "$etc/hotline/.globals.tmp"
  put "$etc/hotline/.globals.tmp" "$etc/hotline/globals.conf"; rm -f "$etc/hotline/.globals.tmp"
fi
if [ -n "$audiosocket" ]; then  # the one setting this script changes in the site's globals.conf
  [ "$audiosocket" = off ] && audiosocket=
  sed "s|^HOTLINE_AUDIOSOCKET=[^ ;]*\( *\)|HOTLINE_AUDIOSOCKET=$audiosocket\1|" "$etc/hotline/globals.conf" > "$etc/hotline/.globals.tmp"
  grep -q "^HOTLINE_AUDIOSOCKET=" "$etc/hotline/.globals.tmp" || echo "HOTLINE_AUDIOSOCKET=$audiosocket" >> "$etc/hotline/.globals.tmp"
  put "$etc/hotline/.globals.tmp" "$etc/hotline/globals.conf"; rm -f "$etc/hotline/.globals.tmp"
fi
[ -e "$etc/hotline/queues.conf" ] || put "$here/queues.conf.sample" "$etc/hotline/queues.conf"
includes="extensions confbridge features musiconhold queues"
if [ -n "$ami_secret" ]; then
  printf '; the 12345 gateway'"'"'s AMI user (agi_scripts/install.sh): agents'"'"' phones, console transfers\n[hotline]\nsecret = %s\ndeny = 0.0.0.0/0.0.0.0\npermit = 127.0.0.1/255.255.255.255\nread = system,call,agent\nwrite = system,call,originate\n' \
    "$ami_secret" > "$etc/hotline/.manager.tmp"
  # holds a secret: readable by Asterisk (the owner of its configuration folder) and nobody else
  chown --reference="$etc" "$etc/hotline/.manager.tmp" 2>/dev/null || true
  chmod 640 "$etc/hotline/.manager.tmp"; mv -f "$etc/hotline/.manager.tmp" "$etc/hotline/manager.conf"
  includes="$includes manager"
fi
for f in $includes; do
  line="#include \"hotline/$f.conf\""
  touch "$etc/$f.conf"
  grep -qxF "$line" "$etc/$f.conf" || printf '\n%s\n' "$line" >> "$etc/$f.conf"
done

# prompts and hold music: only what is new or changed is rendered
"$python" -m ivr.prompts render --out "$sounds/hotline" --moh "$moh/hotline" >&2

if [ "$reload" = 1 ]; then
  read -r -a rx <<< "${ASTERISK_RX:-asterisk -rx}"
  for cmd in "dialplan reload" "module reload features" "module reload app_confbridge.so" \
             "module reload app_queue.so" "moh reload"; do
    "${rx[@]}" "$cmd" >/dev/null
  done
  [ -z "$ami_secret" ] || "${rx[@]}" "manager reload" >/dev/null
  echo "installed into $etc and reloaded" >&2
else
  echo "installed into $etc (not reloaded)" >&2
fi
