"""homelab-router: the one OpenAI-compatible endpoint; deterministic routing over the lab's upstreams."""

from services.router.app import RouterSettings, create_app
from services.router.decide import Decider, Decision
from services.router.policy import Policy, load_policy, parse_policy

__all__ = ["Decider", "Decision", "Policy", "RouterSettings", "create_app", "load_policy", "parse_policy"]
