"""Typed async client for homelab-router (used by vision_notifier and the ops commands)."""

from router_client.client import RouterClient, RouterError, RouterRejected, RouterUnavailable

__all__ = ["RouterClient", "RouterError", "RouterRejected", "RouterUnavailable"]
