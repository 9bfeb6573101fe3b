"""The routing core of the 12345 gateway: rules, router, ACD. Pure Python, no web or telephony imports."""
