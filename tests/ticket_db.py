"""Databases for ticket tests: a fresh SQLite file always, PostgreSQL when one is reachable.

PostgreSQL comes from ``DATABASE_URL`` (when it is a PostgreSQL URL), else the local server
at ``postgresql+psycopg://postgres@127.0.0.1:5432/test``. Each test run gets its own schema,
dropped at the end, so runs never see each other's tickets.
"""
from __future__ import annotations

import os
import uuid
from functools import lru_cache

LOCAL_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def postgres_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    return url if url.startswith("postgresql") else LOCAL_POSTGRES


@lru_cache(maxsize=1)
def postgres_reachable() -> str | None:
    """None when PostgreSQL answers, else why not (the reason a test is skipped with)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres_url(), connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return None
    except Exception as exc:  # any failure to connect means: skip
        return f"PostgreSQL not reachable at {postgres_url()}: {type(exc).__name__}"
    finally:
        engine.dispose()


def fresh_schema() -> str:
    return f"test_tickets_{uuid.uuid4().hex[:12]}"
