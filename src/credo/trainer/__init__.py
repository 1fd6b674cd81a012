"""Config, SFT warm start, the RL loop, checkpoints, metrics and the run report."""
