"""Runtime: how the product's processes are served and started (gunicorn settings, embedded Redis)."""
