"""Starts `launch.py` (on the smoke config, or any flags) as a subprocess."""

import os
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(workdir, data_dir, log, devices: int, overrides: dict,
          extra=()) -> subprocess.Popen:
  """One training process on `devices` simulated CPU devices.

  Args:
    workdir: the run's --workdir.
    data_dir: a prepared config.data.data_dir.
    log: an open file receiving stdout and stderr.
    devices: simulated CPU devices of the process.
    overrides: config field (dotted, without 'config.') -> value.
    extra: further command-line flags, e.g. the distributed ones.
  """
  return launch(
      ['--config=experiments/configs/smoke.py', f'--workdir={workdir}',
       f'--config.data.data_dir={data_dir}',
       *(f'--config.{name}={value}' for name, value in overrides.items()),
       *extra],
      log, devices,
  )


def launch(flags, log, devices: int = 1,
           start_new_session: bool = False) -> subprocess.Popen:
  """`python launch.py FLAGS` from the repository root on CPU devices.

  With start_new_session, the process leads a process group of its own, as
  a command started from a terminal does, for signals to the whole group.
  """
  env = dict(
      os.environ,
      JAX_PLATFORMS='cpu',
      XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
  )
  return subprocess.Popen(
      [sys.executable, 'launch.py', *flags], cwd=REPO, env=env, stdout=log,
      stderr=subprocess.STDOUT, start_new_session=start_new_session,
  )


def free_port() -> int:
  """A TCP port on 127.0.0.1 nothing listens on, for a coordinator."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]
