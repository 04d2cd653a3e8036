"""Common package for every homelab service: settings, JSONL logs, message models."""

from shared.jsonl import JsonlWriter

__all__ = ["JsonlWriter"]
