"""credo: reinforcement learning of reasoning, with credit assigned to the real source of error."""

__version__ = "0.1.0"
