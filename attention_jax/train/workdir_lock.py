"""One run at a time per workdir: a lock held for as long as a run uses it.

The lock is `fcntl.flock` on a file in the workdir. The kernel releases it
when the process ends, however it ends (SIGKILL, a crash, the OOM killer), so
a lock left by a dead run is recognised by being unlocked: its file stays
behind, harmless, and the next run takes it. Nothing is ever stuck.

Each process of a multi-process run locks a file of its own
(`.lock.process_<index>`), so every process of a second run is refused, not
only the one that would have met process 0's lock. A study locks its own
workdir (`.lock.study`) while each point's process locks the point's
sub-workdir. `flock` is honoured on local disks; between machines only on
network file systems that support it.
"""

import contextlib
import fcntl
import os
from typing import Iterator


class WorkdirInUseError(RuntimeError):
  """Another live process holds the workdir's lock."""


@contextlib.contextmanager
def hold(workdir: str, name: str) -> Iterator[None]:
  """Holds `workdir/name` locked for the body; refuses if another process does.

  Raises:
    WorkdirInUseError: naming the workdir, the holder and the fix.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, name)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 1000, 0).decode(errors='replace').strip()
      raise WorkdirInUseError(
          f'{os.path.abspath(workdir)} is in use by another run '
          f'({holder or "process unknown"}; lock {path}). Wait for it to '
          'finish or stop it, or use another --workdir. A run that died '
          'holds no lock: the kernel releases it.'
      ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'pid {os.getpid()} on {os.uname().nodename}'.encode(), 0)
    yield
  finally:
    # Closing the descriptor releases the lock.
    os.close(fd)
