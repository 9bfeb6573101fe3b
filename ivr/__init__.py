"""The call as it happens: the flow (front-end independent), what the caller said (pre-fill),
prompts, the wiring of a process (services), and the two front-ends, ``ivr.twilio`` and
``ivr.asterisk`` (whose entry points are ``agi_scripts/``). See docs/architecture.md."""
