"""Studies: a base config and a sweep of named points over variants and seeds.

A study is a Python file with

  get_config(arg=None) -> ml_collections.ConfigDict   # the base config
  sweep() -> list[Point]                              # what to vary
  BASELINE = 'attention=dot_product'                  # a variant name
  REFERENCE = '...'   # optional: published finding quoted in the report

`grid` builds the usual sweep: the product of named axes, each setting one
config field, times seeds. A point's sub-workdir is
`WORKDIR/points/<variant>/seed=<seed>`.
"""

import dataclasses
import importlib.util
import itertools
import os
from typing import Any, Mapping, Sequence

import ml_collections

# Fields that set a point's training budget; the study sets them, not a sweep.
BUDGET_FIELDS = ('num_train_steps', 'max_train_seconds')


class StudyError(ValueError):
  """A study file or sweep that cannot be run as written."""


@dataclasses.dataclass(frozen=True)
class Point:
  """One training run: `variant` (e.g. 'heads=8') trained with `seed`."""
  variant: str
  seed: int
  # Dotted config field -> value, applied on top of the base config.
  overrides: Mapping[str, Any]

  @property
  def name(self) -> str:
    return f'{self.variant}/seed={self.seed}'


def grid(
    axes: Mapping[str, tuple[str, Sequence[Any]]], seeds: Sequence[int]
) -> list[Point]:
  """The product of `axes` times `seeds`.

  Args:
    axes: axis name -> (dotted config field, values), e.g.
      `{'heads': ('model.num_heads', (1, 2, 4))}`.
    seeds: values of `config.seed`; each seeds parameters and data order.

  Returns:
    Points named like 'heads=2' (axes joined by ','), seed by seed: every
    variant of the first seed, then of the next, so a study stopped early
    has whole seeds to compare.
  """
  names = list(axes)
  variants = {}
  for values in itertools.product(*(axes[n][1] for n in names)):
    variant = ','.join(f'{n}={v}' for n, v in zip(names, values))
    variants[variant] = {axes[n][0]: v for n, v in zip(names, values)}
  return [Point(variant, s, {**fields, 'seed': s})
          for s in seeds for variant, fields in variants.items()]


@dataclasses.dataclass(frozen=True)
class Study:
  """A loaded study file."""
  path: str
  description: str
  base_config: ml_collections.ConfigDict
  points: tuple[Point, ...]
  baseline: str
  reference: str

  @property
  def variants(self) -> list[str]:
    return list(dict.fromkeys(p.variant for p in self.points))

  def point(self, name: str) -> Point:
    for p in self.points:
      if p.name == name:
        return p
    raise StudyError(
        f'No point {name!r} in {self.path}; its points are: '
        + ', '.join(p.name for p in self.points)
    )

  def point_config(self, point: Point) -> ml_collections.ConfigDict:
    """The base config with `point`'s overrides applied (a copy)."""
    config = ml_collections.ConfigDict(self.base_config.to_dict())
    # Locked: a misspelt field is an error, not a new field.
    config.lock()
    config.update_from_flattened_dict(dict(point.overrides))
    return config


def _load_module(path: str):
  spec = importlib.util.spec_from_file_location(
      '_study_' + os.path.splitext(os.path.basename(path))[0], path
  )
  if spec is None or spec.loader is None:
    return None
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _check(study: Study) -> None:
  """Refuses sweeps that would run the wrong experiment."""
  if not study.points:
    raise StudyError(f'sweep() of {study.path} returned no points.')
  names = [p.name for p in study.points]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise StudyError(
        f'{study.path}: points named twice: {repeated}. Give every variant '
        'a distinct name and every seed once.'
    )
  if study.baseline not in study.variants:
    raise StudyError(
        f'{study.path}: BASELINE = {study.baseline!r} is not a variant of the '
        f'sweep; its variants are {study.variants}.'
    )
  for point in study.points:
    for field in point.overrides:
      if field in BUDGET_FIELDS:
        raise StudyError(
            f'{study.path}: point {point.name} overrides {field}; points are '
            'compared at one budget set for the whole study (the base '
            "config's num_train_steps, or launch.py --equal_time=SECONDS)."
        )
    if point.overrides.get('seed', point.seed) != point.seed:
      raise StudyError(
          f'{study.path}: point {point.name} sets seed='
          f'{point.overrides["seed"]}, not its own seed {point.seed}.'
      )
    try:
      study.point_config(point)
    except (KeyError, AttributeError, TypeError) as e:
      raise StudyError(
          f'{study.path}: point {point.name} overrides a field the base '
          f'config lacks or gives it a value of the wrong type: {e}'
      ) from None


def load(path: str, base_config: ml_collections.ConfigDict | None = None
         ) -> Study:
  """Loads and checks the study at `path`.

  Args:
    path: the study file, or `FILE:ARG` as config_flags takes it: ARG goes
      to the file's `get_config`, and stays in each point's command.
    base_config: the base config with command-line overrides applied (from
      config_flags); by default the file's `get_config(ARG)`.
  """
  study = load_if_study(path, base_config)
  if study is None:
    raise StudyError(f'{path} defines no sweep(); it is not a study.')
  return study


def load_if_study(
    path: str, base_config: ml_collections.ConfigDict | None = None
) -> Study | None:
  """As `load`, but None for a config file without a sweep (a plain run)."""
  file_path, _, arg = path.partition(':')
  module = _load_module(file_path)
  if module is None or not hasattr(module, 'sweep'):
    return None
  if not hasattr(module, 'BASELINE'):
    raise StudyError(
        f'{path} sets no BASELINE: name the variant the others are compared '
        "with, e.g. BASELINE = 'attention=dot_product'."
    )
  if base_config is None:
    base_config = module.get_config(arg or None)
  study = Study(
      path=path,
      description=(module.__doc__ or '').strip(),
      base_config=ml_collections.ConfigDict(base_config.to_dict()),
      points=tuple(module.sweep()),
      baseline=module.BASELINE,
      reference=getattr(module, 'REFERENCE', '').strip(),
  )
  _check(study)
  return study
