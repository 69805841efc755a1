"""Refuses an inconsistent experiment config before anything is compiled.

Every check names the offending field and how to fix it. Mechanism and
position-scheme requirements are read from their declared capabilities
(attention/base.py), never from lists kept here.
"""

import dataclasses
import math

import jax
import ml_collections

from attention_jax import attention
from attention_jax import sharding
from attention_jax.attention import frame
from attention_jax.attention import fused
from attention_jax.attention import positions
from attention_jax.data import corpora
from attention_jax.diagnostics import tasks
from attention_jax.model import from_config
from attention_jax.model.config import PLACES


class ConfigError(ValueError):
  """The config cannot run as given; the message names the field and the
  fix."""


@dataclasses.dataclass(frozen=True)
class Range:
  """The values a numeric field accepts: a type, bounds and special values.

  Attributes:
    kind: int (bool refused) or float (int accepted, NaN and inf refused).
    low, high: bounds, None for unbounded.
    low_open, high_open: that bound itself is excluded.
    special: values outside the bounds that mean something, with what.
  """

  kind: type
  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  special: tuple[tuple[int, str], ...] = ()

  def accepts(self, value) -> bool:
    if isinstance(value, bool) or not isinstance(
        value, (int,) if self.kind is int else (int, float)):
      return False
    if any(value == v for v, _ in self.special):
      return True
    if not math.isfinite(value):
      return False
    if self.low is not None and (
        value < self.low or (self.low_open and value == self.low)):
      return False
    if self.high is not None and (
        value > self.high or (self.high_open and value == self.high)):
      return False
    return True

  def __str__(self) -> str:
    noun = 'an integer' if self.kind is int else 'a number'
    if self.low is not None and self.high is not None:
      bounds = (f'in {"(" if self.low_open else "["}{self.low}, {self.high}'
                f'{")" if self.high_open else "]"}')
    elif self.low is not None:
      bounds = f'{">" if self.low_open else ">="} {self.low}'
    else:
      bounds = f'{"<" if self.high_open else "<="} {self.high}'
    specials = ''.join(f', or {v} ({meaning})' for v, meaning in self.special)
    return f'{noun} {bounds}{specials}'


_COUNT = Range(int, 1)
_NON_NEGATIVE_INT = Range(int, 0)
_POSITIVE = Range(float, 0, low_open=True)
_PROBABILITY = Range(float, 0, 1, high_open=True)
_REST_OF_DEVICES = Range(int, 1, special=((-1, 'the rest of the devices'),))

# Every numeric field of an experiment config (experiments/configs/bible.py)
# and the values it accepts. Enumerated fields (dataset, mechanisms, position
# scheme, implementation, dtype, mesh rules) and the mechanisms' own options
# are checked by their registries below; bool fields by ConfigDict's types.
RANGES: dict[str, Range] = {
    'seed': Range(int, 0, 2**32 - 1),
    # Padding, EOS and unknown are pieces too.
    'data.vocab_size': Range(int, 4),
    # One piece and EOS.
    'data.max_len': Range(int, 2),
    'model.emb_dim': _COUNT,
    'model.num_heads': _COUNT,
    'model.num_kv_heads': _NON_NEGATIVE_INT,
    'model.num_encoder_layers': _COUNT,
    'model.num_decoder_layers': _COUNT,
    'model.qkv_dim': _COUNT,
    'model.mlp_dim': _COUNT,
    'model.dropout_rate': _PROBABILITY,
    'model.attention_dropout_rate': _PROBABILITY,
    'model.qk_norm_gain': _POSITIVE,
    'optimizer.learning_rate': _POSITIVE,
    'optimizer.warmup_steps': _NON_NEGATIVE_INT,
    'optimizer.beta1': _PROBABILITY,
    'optimizer.beta2': _PROBABILITY,
    'optimizer.eps': Range(float, 0),
    'optimizer.weight_decay': Range(float, 0),
    'optimizer.grad_clip_norm': _POSITIVE,
    'label_smoothing': _PROBABILITY,
    'batch_size': _COUNT,
    'micro_batches': _COUNT,
    'mesh.data': _REST_OF_DEVICES,
    'mesh.fsdp': _REST_OF_DEVICES,
    'num_train_steps': _COUNT,
    # 0: no time limit.
    'max_train_seconds': Range(float, 0),
    'log_every': _COUNT,
    'eval_every': _COUNT,
    'checkpoint_every': _COUNT,
    'keep_checkpoints': _COUNT,
    'profile_steps': _NON_NEGATIVE_INT,
    'eval.beam_size': _COUNT,
    'eval.length_penalty': Range(float, 0),
    'eval.max_decode_len': _COUNT,
    'eval.decode_batch_size': _COUNT,
    # 0: all of them.
    'eval.bleu_sentences': _NON_NEGATIVE_INT,
    'eval.final_sentences': _NON_NEGATIVE_INT,
    'eval.average_checkpoints': Range(int, 2, special=((0, 'off'),)),
}


def check_ranges(config: ml_collections.ConfigDict) -> None:
  """Refuses a value of a RANGES field outside its range, naming both.

  A field the config lacks is skipped (configs of other experiments may have
  fewer), and so is the encoder's depth of a decoder-only task (0 there).
  """
  decoder_only = config.get('task', 'translation') != 'translation'
  for name, valid in RANGES.items():
    if decoder_only and name == 'model.num_encoder_layers':
      continue
    group, _, field = name.rpartition('.')
    parent = config.get(group) if group else config
    if parent is None or field not in parent:
      continue
    value = parent[field]
    if not valid.accepts(value):
      raise ValueError(
          f'config.{name}={value!r} is out of range; it must be {valid}.'
      )


def check_config(config: ml_collections.ConfigDict) -> None:
  """Refuses a config that cannot run.

  Raises:
    ConfigError: naming the offending field and how to fix it (a ValueError;
      the checks of the registries and tasks it calls raise ValueError, and
      their messages are kept).
  """
  try:
    _check_config(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _check_config(config: ml_collections.ConfigDict) -> None:
  check_ranges(config)
  task = config.get('task', 'translation')
  if task == 'translation':
    corpora.check_dataset(config.data)
    places = PLACES
  else:
    if config.model.num_encoder_layers:
      raise ValueError(
          f'config.task={task!r} trains a decoder-only model, but config.'
          f'model.num_encoder_layers={config.model.num_encoder_layers}; set '
          'it to 0.')
    tasks.get(task)
    tasks.settings(config.data)
    # A decoder-only model has causal self-attention alone.
    places = ('decoder_self_attention',)
  model = config.model
  from_config.check_not_legacy(model, 'This config')
  _check_attention(model, places)
  for width in ('emb_dim', 'qkv_dim'):
    if model[width] % model.num_heads:
      raise ValueError(
          f'config.model.{width}={model[width]} is not divisible by '
          f'config.model.num_heads={model.num_heads}; choose a head count '
          'that divides it.'
      )
  if model.dtype not in from_config.DTYPES:
    raise ValueError(
        f'config.model.dtype={model.dtype!r}; valid choices are: '
        f'{", ".join(from_config.DTYPES)}.'
    )
  _check_parallelism(config)
  _check_averaging(config)


def _check_averaging(config: ml_collections.ConfigDict) -> None:
  """The checkpoints to average are kept, and a full run writes them."""
  count = config.eval.get('average_checkpoints', 0)
  if not count:
    return
  if count > config.keep_checkpoints:
    raise ValueError(
        f'config.eval.average_checkpoints={count} averages more checkpoints '
        f'than config.keep_checkpoints={config.keep_checkpoints} keeps; '
        f'raise keep_checkpoints to at least {count}.'
    )
  # One at each multiple of checkpoint_every, and one at the last step.
  written = math.ceil(config.num_train_steps / config.checkpoint_every)
  if count > written:
    raise ValueError(
        f'config.eval.average_checkpoints={count}, but a run of '
        f'config.num_train_steps={config.num_train_steps} saves only {written} '
        f'checkpoint(s) every config.checkpoint_every='
        f'{config.checkpoint_every} steps; lower checkpoint_every or '
        'average_checkpoints.'
    )


def _check_parallelism(config: ml_collections.ConfigDict) -> None:
  """The mesh fits the devices and every batch splits over it."""
  devices = jax.device_count()
  sharding.mesh_shape(config.mesh, devices)
  sharding.logical_rules(config.mesh)
  rows_per_slice = devices * config.micro_batches
  if config.batch_size % rows_per_slice:
    raise ValueError(
        f'config.batch_size={config.batch_size} does not split into '
        f'config.micro_batches={config.micro_batches} micro-batches over the '
        f'{devices} devices of the data and fsdp axes; use a multiple of '
        f'{rows_per_slice}.'
    )
  if config.eval.get('decode_batch_size', devices) % devices:
    raise ValueError(
        f'config.eval.decode_batch_size={config.eval.decode_batch_size} is '
        f'not divisible by the {devices} devices of the data and fsdp axes; '
        'use a multiple of the device count.'
    )


def _names_where(predicate) -> str:
  return ', '.join(n for n in attention.names() if predicate(attention.get(n)))


def _check_attention(model: ml_collections.ConfigDict,
                     places: tuple[str, ...]) -> None:
  """Each of the model's places' mechanisms exists and can do what the
  place needs."""
  try:
    scheme = positions.SCHEMES.get(model.position_scheme)
  except ValueError as e:
    raise ValueError(f'config.model.position_scheme: {e}') from None
  for name, values in model.options.items():
    attention.MECHANISMS.options(name, values)
  for name, values in model.position_options.items():
    positions.SCHEMES.options(name, values)
  for place in places:
    field = f'config.model.{place if model[place] else "attention"}'
    try:
      names = from_config.layer_mechanisms(model, place)
    except ValueError as e:
      raise ValueError(str(e)) from None
    for name in dict.fromkeys(names):
      _check_place(model, scheme, place, field, name)
  _check_implementation(model)
  kv_heads = model.num_kv_heads
  if kv_heads and model.num_heads % kv_heads:
    raise ValueError(
        f'config.model.num_kv_heads={kv_heads} must divide '
        f'config.model.num_heads={model.num_heads} (0 means num_heads, 1 is '
        'multi-query attention).'
    )
  try:
    scheme().check(model.qkv_dim // model.num_heads)
  except ValueError as e:
    raise ValueError(f'config.model.{e}') from None


def _check_place(model, scheme, place: str, field: str, name: str) -> None:
  """`name` exists and can serve `place` under the model's options."""
  try:
    cls = attention.get(name)
  except ValueError as e:
    raise ValueError(f'{field}: {e}') from None
  causal = place == 'decoder_self_attention'
  self_attention = place != 'cross_attention'
  caps = cls.capabilities
  if causal and not caps.causal:
    raise ValueError(
        f'{field}={name!r} cannot be causal, so it cannot be the decoder '
        'self-attention; choose one of: '
        f'{_names_where(lambda c: c.capabilities.causal)} (or set '
        'config.model.decoder_self_attention to keep it elsewhere).'
    )
  for able, where, other in (
      (caps.bidirectional or not self_attention or causal,
       'the encoder self-attention (non-causal)', 'encoder_self_attention'),
      (caps.cross_attention or self_attention, 'cross-attention',
       'cross_attention')):
    if not able:
      raise ValueError(
          f'{field}={name!r} is not defined for {where}, so it cannot be '
          f'the {place.replace("_", " ")}; set config.model.{other} to one '
          f'of: {_names_where(lambda c, a=other: _serves(c, a))} (or use '
          f'{name!r} only in config.model.decoder_self_attention).'
      )
  for option, values, needs in (
      ('qk_norm', frame.QK_NORMS,
       'query and key projections it does not normalise itself'),
      ('attention_sink', frame.SINKS, 'a softmax denominator')):
    value = model[option]
    if value not in values:
      raise ValueError(
          f'config.model.{option}={value!r}; valid choices are: '
          f'{", ".join(values)}.')
    if value != 'none' and not _allows(cls, option):
      raise ValueError(
          f'config.model.{option}={value!r} needs {needs}, which {field}='
          f'{name!r} (the {place.replace("_", " ")}) does not have; use it '
          f'with one of: {_names_where(lambda c, o=option: _allows(c, o))}, '
          f"or set config.model.{option}='none'."
      )
  try:
    frame.check_place(cls, scheme, causal=causal,
                      self_attention=self_attention)
  except ValueError:
    honouring = _names_where(
        lambda c: scheme.name in c.capabilities.position_schemes)
    raise ValueError(
        f'config.model.position_scheme={scheme.name!r} acts inside '
        f'self-attention ({scheme.acts_in}), but {field}={name!r} (the '
        f'{place.replace("_", " ")}) does not honour it, so the model '
        f'would be blind to positions there; use one of: {honouring}, or '
        'a scheme added to the embeddings: '
        f'{_names_where_scheme(positions.EMBEDDING)}.'
    ) from None


def _serves(cls, place: str) -> bool:
  caps = cls.capabilities
  return caps.bidirectional if place == 'encoder_self_attention' else (
      caps.cross_attention)


def _allows(cls, option: str) -> bool:
  caps = cls.capabilities
  if option == 'qk_norm':
    return frame.takes_qk_norm(caps)
  return caps.sink


def _names_where_scheme(acts_in: str) -> str:
  return ', '.join(n for n in positions.SCHEMES.names()
                   if positions.SCHEMES.get(n).acts_in == acts_in)


def _check_implementation(model: ml_collections.ConfigDict) -> None:
  """A fused kernel asked for by name is one some mechanism in use has."""
  requested = model.implementation
  if requested not in fused.IMPLEMENTATIONS:
    raise ValueError(
        f'config.model.implementation={requested!r}; valid choices are: '
        f'{", ".join(fused.IMPLEMENTATIONS)}.'
    )
  if requested in ('auto', 'xla'):
    return
  used = from_config.mechanisms_in_use(model)
  if not any(requested in attention.get(n).capabilities.fused_kernels
             for n in used):
    raise ValueError(
        f'config.model.implementation={requested!r} is a fused kernel of '
        f'{_names_where(lambda c: requested in c.capabilities.fused_kernels)}'
        f', none of which this model uses ({", ".join(used)}); use \'auto\' '
        "or 'xla'."
    )
