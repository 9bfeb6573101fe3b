"""Intake: what a call leaves behind — speech recognised, tickets, the rq jobs and their worker."""
