"""Command-line parsing for entry points with a config flag: an override
of a config field that does not exist is refused in one line.

ml_collections' `config_flags` applies `--config.a.b=value` overrides while
absl parses the flags, and a misspelt field escapes as a KeyError or an
AttributeError with two chained tracebacks, its "Did you mean" hint last.
Pass `parse_flags` to `absl.app.run(main, flags_parser=parse_flags)`.
"""

import sys

from absl import app


def _field_message(error: BaseException) -> str:
  """ml_collections' message for the missing field: that of the outermost
  KeyError in the chain `error` ends (it carries the "Did you mean" hint),
  on one line."""
  chain = error
  while chain is not None and not isinstance(chain, KeyError):
    chain = chain.__cause__ or chain.__context__
  found = chain if chain is not None else error
  text = str(found.args[0]) if found.args else str(found)
  return '. '.join(line.strip() for line in text.splitlines())


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing with usage, but a config override naming a field the
  config does not have exits with status 1 and one message naming the
  override and ml_collections' hint.

  Returns:
    The arguments absl leaves to `main`.
  """
  try:
    return app.parse_flags_with_usage(argv)
  except (KeyError, AttributeError) as error:
    overrides = [arg for arg in argv[1:] if arg.startswith('--config.')]
    sys.stderr.write(
        f'Config override refused: no such field {_field_message(error)} '
        f'(overrides given: {" ".join(overrides) or "none"}). An override '
        'must name an existing field of the config file, e.g. '
        '--config.model.num_heads=8; a mechanism\'s options are under '
        '--config.model.options.<mechanism>.<field>.\n')
    sys.exit(1)
