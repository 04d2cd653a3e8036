"""uvicorn's httptools protocol, draining gently when the router is told to stop (SIGTERM, a rolling
restart of ``--workers``).

uvicorn closes an idle keep-alive connection the moment shutdown starts; a client that sends its next
request as soon as the last answer is in (an agent, a busy SDK client) then sees the connection cut
under a request it has already sent — a failure no retry-free client survives. Here an idle connection
stays open for :data:`DRAIN_IDLE` seconds: a request that comes meanwhile is served, with
``Connection: close`` (the client's next request opens a new connection, which a worker still running
accepts); then the connection is closed. A connection busy with a request or a stream gets
``Connection: close`` on that answer, as in uvicorn.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DRAIN_IDLE = 1.0


class DrainingHttpTools(HttpToolsProtocol):
    draining = False

    def shutdown(self) -> None:
        self.draining = True
        if self.cycle is None or self.cycle.response_complete:
            self.loop.call_later(DRAIN_IDLE, self._close_if_idle)
        else:
            self.cycle.keep_alive = False

    def _close_if_idle(self) -> None:
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.draining and self.cycle is not None:
            self.cycle.keep_alive = False  # this answer is the connection's last: the client learns it
