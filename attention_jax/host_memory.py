"""Transparent huge pages for the host allocator, set before JAX starts.

XLA's CPU runtime allocates a fresh buffer for most of a step's outputs and
temporaries, and glibc's malloc serves every allocation above its mmap
threshold (at most 32 MiB) with a fresh `mmap`, which the kernel backs one
4 KiB page at a time, on first write. A training step of the `bible` config
at 32 rows of 64 tokens took about 230,000 such page faults (0.46 s of
kernel time per 1.5 s step) on the project's 2-core machine. glibc 2.35 and
later can ask for transparent huge pages on those mappings (the
`glibc.malloc.hugetlb=1` tunable: `madvise(MADV_HUGEPAGE)`, 2 MiB pages, so
512 times fewer faults); the same step then took 1.26 s (see the README's
"Speed on this CPU"). Numerics are untouched: only where host memory comes
from changes.

glibc reads its tunables once, when the process starts, so `launch.py` calls
`reexec_with_huge_pages()` before anything else and the process replaces
itself (same PID, same arguments) with the tunable in its environment; its
subprocesses (study points, multi-process workers) inherit it. Nothing is
changed where it would do nothing: outside Linux with glibc >= 2.35, where
the kernel has transparent huge pages off (`never`) or on for every mapping
(`always`), or where GLIBC_TUNABLES already names the tunable. Set
ATTENTION_JAX_HUGE_PAGES=0 to keep the allocator as it is. Accelerator
memory is not allocated by malloc, so on GPU and TPU this changes only the
host side (input pipeline, checkpoints).

This module imports nothing heavier than `os`: it runs before `jax` is
imported.
"""

import os
import sys

TUNABLE = 'glibc.malloc.hugetlb=1'
OPT_OUT = 'ATTENTION_JAX_HUGE_PAGES'
THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'


def _glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the C library if it is glibc, else None."""
  try:
    name, version = os.confstr('CS_GNU_LIBC_VERSION').split()
  except (AttributeError, ValueError, OSError):
    return None
  if name != 'glibc':
    return None
  try:
    major, minor = version.split('.')[:2]
    return int(major), int(minor)
  except ValueError:
    return None


def kernel_thp_mode(path: str = THP_MODE_FILE) -> str | None:
  """The kernel's transparent huge page mode ('always', 'madvise' or
  'never'; the bracketed word of `path`), or None if unknown."""
  try:
    with open(path) as f:
      words = f.read().split()
  except OSError:
    return None
  chosen = [w[1:-1] for w in words if w.startswith('[') and w.endswith(']')]
  return chosen[0] if chosen else None


def environment_with_huge_pages(
    environ: dict[str, str],
    glibc: tuple[int, int] | None,
    thp_mode: str | None,
) -> dict[str, str] | None:
  """The environment to restart with, or None if there is nothing to do.

  Args:
    environ: the process environment.
    glibc: glibc's (major, minor) version, None if the C library is not
      glibc.
    thp_mode: the kernel's transparent huge page mode.

  Returns:
    A copy of `environ` with `TUNABLE` appended to GLIBC_TUNABLES (glibc
    separates tunables with ':'), or None when glibc is missing or older
    than 2.35, the kernel mode is not 'madvise', the user opted out with
    ATTENTION_JAX_HUGE_PAGES=0, or GLIBC_TUNABLES already sets
    glibc.malloc.hugetlb (to any value: the user's choice wins).
  """
  if environ.get(OPT_OUT, '1') == '0':
    return None
  if glibc is None or glibc < (2, 35) or thp_mode != 'madvise':
    return None
  tunables = environ.get('GLIBC_TUNABLES', '')
  if 'glibc.malloc.hugetlb=' in tunables:
    return None
  new = dict(environ)
  new['GLIBC_TUNABLES'] = f'{tunables}:{TUNABLE}' if tunables else TUNABLE
  return new


def reexec_with_huge_pages(unless_flag: str | None = None) -> None:
  """Replaces this process with itself under `TUNABLE` where that helps.

  Call it first thing in a program's entry point, before importing jax
  (the work done before the call is done twice). Returns normally when
  nothing needs changing; otherwise it does not return (os.execve).

  Args:
    unless_flag: a command-line flag (e.g. '--baseline') whose presence in
      sys.argv keeps the process as it is: a benchmark comparing checkouts
      leaves each checkout's own processes to choose their allocator.
  """
  if unless_flag and any(arg.startswith(unless_flag) for arg in sys.argv[1:]):
    return
  environ = environment_with_huge_pages(
      dict(os.environ), _glibc_version(), kernel_thp_mode())
  if environ is None:
    return
  # The restarted process finds the tunable set and goes on.
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
