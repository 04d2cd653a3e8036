"""Typed async client for homelab-router (used by vision_notifier and the ops commands)."""

from router_client.client import CallFailed, RouterClient, RouterRejected, RouterUnavailable

__all__ = ["CallFailed", "RouterClient", "RouterRejected", "RouterUnavailable"]
