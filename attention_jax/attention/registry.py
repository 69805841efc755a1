"""String-keyed registries of attention mechanisms and position schemes.

Each entry is a class with an `Options` frozen dataclass (its
hyper-parameters, with defaults and validation in `__post_init__`). Looking
up a name that does not exist raises an error naming the valid choices; a
name that was renamed raises an error naming the new one, so an old config
is never silently reinterpreted.
"""

import dataclasses
from typing import Any, Callable, Mapping, TypeVar

_ClassT = TypeVar('_ClassT', bound=type)


class Registry:
  """Classes selectable by name, each with its own options dataclass."""

  def __init__(self, kind: str, config_path: str,
               renamed: Mapping[str, str] | None = None):
    """A registry of `kind` ('attention mechanism', say).

    Args:
      kind: what the entries are, for error messages.
      config_path: where their options live in a config, for messages
        ('config.model.options').
      renamed: old name -> new name of entries that were renamed.
    """
    self.kind = kind
    self.config_path = config_path
    self._renamed = dict(renamed or {})
    self._entries: dict[str, type] = {}

  def register(self, name: str) -> Callable[[_ClassT], _ClassT]:
    """Class decorator that makes `cls` selectable by `name`."""

    def add(cls: _ClassT) -> _ClassT:
      if name in self._entries or name in self._renamed:
        raise ValueError(f'The {self.kind} {name!r} is registered twice.')
      if not dataclasses.is_dataclass(cls.Options):
        raise TypeError(f'{cls.__name__}.Options must be a dataclass.')
      cls.name = name
      self._entries[name] = cls
      return cls

    return add

  def get(self, name: str) -> type:
    """The class registered as `name`.

    Raises:
      ValueError: for a renamed or unknown name, naming the new name or the
        valid choices.
    """
    if name in self._renamed:
      raise ValueError(
          f'The {self.kind} {name!r} is now called '
          f'{self._renamed[name]!r}; use that name.'
      )
    try:
      return self._entries[name]
    except KeyError:
      raise ValueError(
          f'Unknown {self.kind} {name!r}; valid choices are: '
          f'{", ".join(self.names())}.'
      ) from None

  def names(self) -> list[str]:
    """Sorted names of all entries."""
    return sorted(self._entries)

  def renamed(self) -> dict[str, str]:
    """Old name -> new name of renamed entries."""
    return dict(self._renamed)

  def options(self, name: str, values: Mapping[str, Any] | None = None):
    """`name`'s options with `values` over the defaults, validated.

    Raises:
      ValueError: naming the config field that is unknown or out of range.
    """
    options_cls = self.get(name).Options
    values = dict(values or {})
    fields = {f.name for f in dataclasses.fields(options_cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
      raise ValueError(
          f'{self.config_path}.{name} has no field {unknown[0]!r}; its '
          f'fields are: {", ".join(sorted(fields)) or "(none)"}.'
      )
    try:
      return options_cls(**values)
    except (TypeError, ValueError) as e:
      raise ValueError(f'{self.config_path}.{name}: {e}') from None

  def default_options(self) -> dict[str, dict[str, Any]]:
    """{name: {field: default}} of every entry, for experiment configs."""
    return {
        name: dataclasses.asdict(cls.Options())
        for name, cls in sorted(self._entries.items())
    }


MECHANISMS = Registry(
    'attention mechanism', 'config.model.options',
    renamed={
        'dot_product': 'softmax',
        'dot': 'unscaled_dot_product',
        'no_attention': 'mean_pooling',
    },
)
register = MECHANISMS.register
get = MECHANISMS.get
names = MECHANISMS.names
