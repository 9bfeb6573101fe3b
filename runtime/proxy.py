"""The buffering proxy in front of the web app: nginx reads each request whole — headers within
10 s, the body within 10 s — before one of gunicorn's few sync workers sees it, so clients that
send slowly or stall hold an nginx connection (cheap) instead of a worker (the whole web tier
with six of them). ``python app.py`` runs it when nginx is installed (``WEB_PROXY=off`` to
serve gunicorn directly); production shape and its config: docs/operations.md.
"""
from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

HEADER_TIMEOUT_S = 10
BODY_TIMEOUT_S = 10


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def nginx_config(listen: str, upstream: str, workdir: str | os.PathLike, max_body: str = "2m",
                 media: str | None = None) -> Path:
    """Write an nginx configuration that listens on ``listen`` (``host:port``) and passes every
    request, read whole, to ``upstream`` (``host:port``, or ``unix:/path`` of gunicorn's socket);
    its pid, logs and buffers in ``workdir``.
    With ``media`` (``host:port``), WebSockets to ``/twilio/media`` go there (Twilio Media Streams,
    ``ivr.twilio.media``), held as long as a caller waits."""
    d = Path(workdir)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    user = f"user {pwd.getpwuid(0).pw_name};" if os.getuid() == 0 else ""  # workers may write the buffers
    conf = d / "nginx.conf"
    conf.write_text(f"""{user}
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  client_header_timeout {HEADER_TIMEOUT_S}s;
  client_body_timeout {BODY_TIMEOUT_S}s;
  send_timeout 30s;
  keepalive_timeout 15s;
  client_max_body_size {max_body};
  server_tokens off;
  upstream hotline_web {{ server {upstream}; }}
  server {{
    listen {listen};{_media_location(media)}
    location / {{
      proxy_pass http://hotline_web;
      proxy_request_buffering on;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_read_timeout 60s;
    }}
  }}
}}
""")
    return conf


def _media_location(media: str | None) -> str:
    if not media:
        return ""
    return f"""
    location = /twilio/media {{
      proxy_pass http://{media};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_set_header Host $http_host;
      proxy_read_timeout 4h;
      proxy_send_timeout 4h;
    }}"""


def nginx_command(conf: Path) -> list[str]:
    return [nginx_binary() or "nginx", "-p", str(conf.parent), "-c", str(conf), "-e", str(conf.parent / "error.log")]
