"""CUDA recovery of a poisoned route: the route's own command, one at a time per route (a lock the
admin API holds), killed after ``recover_timeout``; the route is vouched for again only on exit 0."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from services.router.policy import Policy
from services.router.state import RouteState
from shared.jsonl import JsonlWriter


class Recovery:
    def __init__(self, policy: Callable[[], Policy], states: Callable[[], dict[str, RouteState]],
                 recoveries: JsonlWriter) -> None:
        self._policy = policy
        self._states = states
        self.recoveries = recoveries
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, route: str) -> asyncio.Lock:
        return self._locks.setdefault(route, asyncio.Lock())

    async def recover(self, name: str) -> dict[str, Any]:
        """Run the route's recovery command (the caller holds its lock): killed after
        ``recover_timeout``; the route is vouched for again only on exit 0."""
        route = self._policy().routes[name]
        st = self._states()[name]
        assert route.recover_command
        st.mark(recovering=True)
        t0 = time.monotonic()
        returncode: int | None = None
        try:
            proc = await asyncio.create_subprocess_exec(
                *route.recover_command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            try:
                async with asyncio.timeout(route.recover_timeout):
                    out, _ = await proc.communicate()
                returncode = proc.returncode
                ok = returncode == 0
                text = out.decode("utf-8", "replace")[-2000:]
            except TimeoutError:
                proc.kill()
                await proc.wait()
                ok, text = False, f"killed: no exit within recover_timeout ({route.recover_timeout:g}s)"
        except OSError as exc:
            ok, text = False, str(exc)
        finally:
            st.mark(recovering=False)
        if ok:
            st.mark(poisoned=False)
        record = {"route": name, "action": "recover_cuda", "ok": ok, "returncode": returncode,
                  "seconds": round(time.monotonic() - t0, 3), "output": text}
        self.recoveries.write(record)
        return record
