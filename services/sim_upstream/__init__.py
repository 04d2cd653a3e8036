"""A simulated OpenAI-compatible upstream for the embedded default, tests and benchmarks."""

from services.sim_upstream.server import SimConfig, SimUpstream

__all__ = ["SimConfig", "SimUpstream"]
