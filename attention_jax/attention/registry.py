"""String-keyed registry of attention mechanisms.

Every registered mechanism is a Flax module class with the same constructor
fields and the same call signature (see `attention_jax.attention.interface`),
so the Transformer chooses one by name and never branches on it.
"""

from typing import Callable, TypeVar

import flax.linen as nn

_ModuleT = TypeVar('_ModuleT', bound=type[nn.Module])
_REGISTRY: dict[str, type[nn.Module]] = {}


def register(name: str) -> Callable[[_ModuleT], _ModuleT]:
  """Class decorator that makes an attention module selectable by `name`."""

  def add(cls: _ModuleT) -> _ModuleT:
    if name in _REGISTRY:
      raise ValueError(f'Attention {name!r} is registered twice.')
    _REGISTRY[name] = cls
    return cls

  return add


def get(name: str) -> type[nn.Module]:
  """Returns the attention module class registered as `name`."""
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ValueError(
        f'Unknown attention {name!r}; valid choices are: {", ".join(names())}.'
    ) from None


def names() -> list[str]:
  """Sorted names of all registered attention mechanisms."""
  return sorted(_REGISTRY)
