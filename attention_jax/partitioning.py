"""Logical axis names of parameters, declared where each one is created.

A parameter's initializer is wrapped with the names of its dimensions; the
training code maps the names to mesh axes with `config.mesh.rules` (e.g.
'embed' -> 'fsdp'), so how parameters are sharded is a config choice and the
model never mentions a mesh.
"""

import flax.linen as nn

VOCAB = 'vocab'
EMBED = 'embed'
MLP = 'mlp'
HEADS = 'heads'
HEAD_DIM = 'head_dim'
# Axes of small per-head tables (relative position buckets, scores).
TABLE = 'table'

NAMES = (VOCAB, EMBED, MLP, HEADS, HEAD_DIM, TABLE)


def init(initializer, *names: str):
  """`initializer` whose parameter carries the logical `names` of its axes."""
  return nn.with_logical_partitioning(initializer, names)
