"""Typed async clients for homelab-router: its model API (the camera pipeline) and its admin API (the CLI,
the watchdog and the scheduler)."""

from router_client.admin import AdminClient, AdminRefused
from router_client.client import CallFailed, RouterClient, RouterRejected, RouterUnavailable

__all__ = ["AdminClient", "AdminRefused", "CallFailed", "RouterClient", "RouterRejected", "RouterUnavailable"]
