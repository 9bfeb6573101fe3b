"""The product's WSGI app for gunicorn in tests/test_faults.py, with one test hook: a request
carrying ``X-Test-Hang`` never returns, so the test can kill the web worker under it."""
from __future__ import annotations

import time

from app import create_app

_app = create_app()


def application(environ, start_response):
    if environ.get("HTTP_X_TEST_HANG"):
        time.sleep(120)  # the test kills this worker long before
    return _app(environ, start_response)
