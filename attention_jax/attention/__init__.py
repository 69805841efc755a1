"""Attention mechanisms, one per file, found and registered on import.

Every module of this package is imported here, so a new file whose class is
decorated with `registry.register(NAME)` is selectable by `NAME` without
editing anything else (see base.py for the contract it follows).
"""

import importlib
import pkgutil

from attention_jax.attention.registry import MECHANISMS
from attention_jax.attention.registry import get
from attention_jax.attention.registry import names

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f'{__name__}.{_module.name}')
