"""homelab-router: the one OpenAI-compatible endpoint; deterministic routing over the lab's upstreams."""

from services.router.app import RouterSettings, create_app
from services.router.decide import Decision, Router
from services.router.policy import Policy, load_policy, parse_policy

__all__ = ["Decision", "Policy", "Router", "RouterSettings", "create_app", "load_policy", "parse_policy"]
