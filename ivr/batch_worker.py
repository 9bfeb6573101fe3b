"""A gunicorn sync worker that serves the requests waiting for it in small batches, so that the
Redis writes of several call starts go to Redis together.

Every ``/twilio/voice`` writes its call's ticket draft, state and leg to Redis before answering
(:mod:`ivr.redis_batch`). On two shared cores the write itself is cheap; waking Redis up for
it, once per call, is not (docs/twilio.md). When several call starts are waiting, this worker
takes up to ``WEB_BATCH`` of them (default 8) and serves them in three steps:

1. reads each request and runs the app on it (the webhook's Redis writes are held back:
   :func:`ivr.redis_batch.hold_writes`);
2. writes the batch's Redis writes in one go (one system call, one wake-up of Redis);
3. sends each answer, then closes it (its Redis replies are read then, usually already there).

No answer leaves before its writes are in Redis's socket, as with one request at a time. Only
``POST /twilio/voice`` is batched (≈ 0.2 ms of work each: an answer waits at most a few of
those); any other request — a console page, a status callback, a slow one — ends the batch
(its answers go out first) and is served alone. With one connection waiting it is gunicorn's
sync worker. Requests are read, answered and logged as gunicorn's sync worker does
(``handle`` / ``handle_request``, whose error handling is kept); only their order changes.
"""
from __future__ import annotations

import errno
import os
import ssl
import sys
from datetime import datetime

from gunicorn import http, sock, util
from gunicorn.http import wsgi
from gunicorn.workers.sync import StopWaiting, SyncWorker

from .redis_batch import hold_writes, release_writes

_AGAIN = (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK)


def batch_size() -> int:
    return max(1, int(os.environ.get("WEB_BATCH") or 8))


class BatchSyncWorker(SyncWorker):
    """gunicorn's sync worker, serving consecutive waiting call starts (``POST /twilio/voice``)
    up to :func:`batch_size` at a time; any other request is served alone, as the sync worker
    does, after the answers of the batch before it."""

    BATCHED = ("POST", "/twilio/voice")

    def run_for_one(self, timeout):
        listener = self.sockets[0]
        size = batch_size()
        while self.alive:
            self.notify()
            pending: list = []
            served = 0
            try:
                while len(pending) < size and self.alive:
                    client, addr = listener.accept()
                    client.setblocking(1)
                    util.close_on_exec(client)
                    served += 1
                    req, client = self._read(client, addr)
                    if req is None:
                        continue
                    if (req.method, req.path) == self.BATCHED:
                        hold_writes()
                        one = self._start(listener, client, addr, req)
                        if one is not None:
                            pending.append(one)
                    else:  # a page, an event, a slow request: the batch's answers go out first
                        self._end_batch(listener, pending)
                        self._serve(listener, client, addr, req)
            except OSError as e:
                if e.errno not in _AGAIN:
                    raise
            finally:
                self._end_batch(listener, pending)
            if served:
                continue
            if not self.is_parent_alive():
                return
            try:
                self.wait(timeout)
            except StopWaiting:
                return

    def _end_batch(self, listener, pending: list) -> None:
        release_writes()  # the batch's Redis writes, in one go, before any of its answers
        for one in pending:
            self._finish(listener, *one)
        pending.clear()

    def _read(self, client, addr):
        """The next request on a new connection, or None (the connection is done with)."""
        try:
            if self.cfg.is_ssl:
                client = sock.ssl_wrap_socket(client, self.cfg)
            parser = http.get_parser(self.cfg, client, addr)
            return next(parser), client
        except BaseException as e:
            self._failed(None, client, addr, e)
            util.close_graceful(client)
            return None, client

    def _serve(self, listener, client, addr, req) -> None:
        """The sync worker's ``handle`` after the request was read."""
        try:
            self.handle_request(listener, req, client, addr)
        except BaseException as e:
            self._failed(req, client, addr, e)
        finally:
            util.close_graceful(client)

    # -- gunicorn's SyncWorker.handle + handle_request, cut where the app has answered --------
    def _start(self, listener, client, addr, req):
        """Run the app on a request; what :meth:`_finish` needs, or None when this connection is
        done with (an error answered)."""
        try:
            environ = {}
            resp = None
            try:
                self.cfg.pre_request(self, req)
                started = datetime.now()
                resp, environ = wsgi.create(req, client, addr, listener.getsockname(), self.cfg)
                resp.force_close()
                self.nr += 1
                if self.nr >= self.max_requests:
                    self.log.info("Autorestarting worker after current request.")
                    self.alive = False
                respiter = self.wsgi(environ, resp.start_response)
            except BaseException:
                self._post_request(req, environ, resp)
                raise
            return client, addr, req, environ, resp, respiter, started
        except BaseException as e:
            self._failed(req, client, addr, e)
            util.close_graceful(client)
            return None

    def _finish(self, listener, client, addr, req, environ, resp, respiter, started) -> None:
        try:
            try:
                try:
                    if isinstance(respiter, environ["wsgi.file_wrapper"]):
                        resp.write_file(respiter)
                    else:
                        for item in respiter:
                            resp.write(item)
                    resp.close()
                finally:
                    self.log.access(resp, req, environ, datetime.now() - started)
                    if hasattr(respiter, "close"):
                        respiter.close()
            except OSError:
                util.reraise(*sys.exc_info())
            except (Exception, SystemExit):
                if resp and resp.headers_sent:
                    self.log.exception("Error handling request")
                    util.close_graceful(client)
                    raise StopIteration()
                raise
            finally:
                self._post_request(req, environ, resp)
        except BaseException as e:
            self._failed(req, client, addr, e)
        finally:
            util.close_graceful(client)

    def _post_request(self, req, environ, resp) -> None:
        try:
            self.cfg.post_request(self, req, environ, resp)
        except Exception:
            self.log.exception("Exception in post_request hook")

    def _failed(self, req, client, addr, e) -> None:
        """SyncWorker.handle's error handling."""
        if isinstance(e, http.errors.NoMoreData):
            self.log.debug("Ignored premature client disconnection. %s", e)
        elif isinstance(e, StopIteration):
            self.log.debug("Closing connection. %s", e)
        elif isinstance(e, ssl.SSLError):
            if e.args[0] == ssl.SSL_ERROR_EOF:
                self.log.debug("ssl connection closed")
            else:
                self.log.debug("Error processing SSL request.")
                self.handle_error(req, client, addr, e)
        elif isinstance(e, OSError):
            if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
            else:
                self.log.debug("Ignoring socket error %s", e)
        else:
            self.handle_error(req, client, addr, e)
