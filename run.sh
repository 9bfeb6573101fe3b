#!/usr/bin/env bash
# Run the 12345 gateway: web app on :8000 (Twilio webhooks, agent and admin pages), the rq
# worker, an embedded Redis unless REDIS_URL is set, SQLite unless DATABASE_URL is set,
# and the shipped transfer_rules.yaml unless RULES_PATH is set.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
exec .venv/bin/python app.py "$@"
