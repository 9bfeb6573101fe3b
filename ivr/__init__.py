"""The call as it happens, independent of the front-end: flow, speech, pre-fill, tickets, jobs."""
