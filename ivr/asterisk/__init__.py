"""The Asterisk front-end's library: the AGI channel, the AMI client, the PBX watcher and switchboard.
Its entry points (AGI scripts, the FastAGI server) live in ``agi_scripts/``."""
