"""Serving a small aiohttp app on loopback (the simulators and the tests' stand-ins)."""

from __future__ import annotations

from aiohttp import web


async def serve(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Start ``app``; returns its runner (``cleanup()`` stops it) and the port it got."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)  # a simulator never waits to stop
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner, int(runner.addresses[0][1])
