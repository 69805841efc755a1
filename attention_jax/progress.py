"""Time left in a long phase, at the pace of its finished part."""


def eta_seconds(done: float, total: float, elapsed: float) -> float | None:
  """Seconds the rest of `total` units takes at the pace of the `done` ones.

  Args:
    done: units finished (sentences, source tokens, study points).
    total: all units, finished or not.
    elapsed: seconds the `done` units took.

  Returns:
    elapsed / done * (total - done), never below 0; None while nothing is
    done, as there is no pace yet.
  """
  if done <= 0:
    return None
  return elapsed / done * max(total - done, 0)


def format_seconds(seconds: float | None) -> str:
  """'H:MM:SS' (hours unbounded); 'unknown' for None."""
  if seconds is None:
    return 'unknown'
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'
