"""Rollouts: the native batched sampler and the turn from `Example`s into scored `Sample`s."""
