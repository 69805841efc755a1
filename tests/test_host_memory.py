"""When launch.py restarts itself with huge pages for glibc's malloc."""

import os
import subprocess
import sys

import pytest

from attention_jax import host_memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('environ, glibc, thp, expected', [
    ({}, (2, 36), 'madvise', 'glibc.malloc.hugetlb=1'),
    ({'GLIBC_TUNABLES': 'glibc.malloc.check=0'}, (2, 41), 'madvise',
     'glibc.malloc.check=0:glibc.malloc.hugetlb=1'),
    # Nothing to do: the user's own value, an opt-out, an old or absent
    # glibc, THP off or already on for every mapping, an unknown mode.
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, (2, 36), 'madvise', None),
    ({'ATTENTION_JAX_HUGE_PAGES': '0'}, (2, 36), 'madvise', None),
    ({}, (2, 34), 'madvise', None),
    ({}, None, 'madvise', None),
    ({}, (2, 36), 'never', None),
    ({}, (2, 36), 'always', None),
    ({}, (2, 36), None, None),
])
def test_environment_to_restart_with(environ, glibc, thp, expected):
  new = host_memory.environment_with_huge_pages(environ, glibc, thp)
  if expected is None:
    assert new is None
  else:
    assert new['GLIBC_TUNABLES'] == expected
    assert environ.get('GLIBC_TUNABLES') != expected  # a copy, not changed


def test_kernel_mode_is_the_bracketed_word(tmp_path):
  path = tmp_path / 'enabled'
  path.write_text('always [madvise] never\n')
  assert host_memory.kernel_thp_mode(str(path)) == 'madvise'
  assert host_memory.kernel_thp_mode(str(tmp_path / 'missing')) is None


_PROGRAM = ('from attention_jax import host_memory\n'
            'host_memory.reexec_with_huge_pages(unless_flag="--baseline")\n'
            'import os, sys\n'
            'print(os.getpid(), os.environ.get("GLIBC_TUNABLES"), sys.argv[1:])')


def _clean_environment():
  env = {k: v for k, v in os.environ.items()
         if k not in ('GLIBC_TUNABLES', host_memory.OPT_OUT)}
  env['PYTHONPATH'] = REPO
  return env


def test_a_program_restarts_once_with_its_arguments():
  env = _clean_environment()
  proc = subprocess.Popen([sys.executable, '-c', _PROGRAM, 'a', '--b=c'],
                          env=env, stdout=subprocess.PIPE, text=True)
  stdout, _ = proc.communicate()
  assert proc.returncode == 0
  pid, tunables, args = stdout.split(' ', 2)
  applies = host_memory.environment_with_huge_pages(
      env, host_memory._glibc_version(), host_memory.kernel_thp_mode())
  assert tunables == (host_memory.TUNABLE if applies else 'None')
  assert args.strip() == "['a', '--b=c']"
  # The same process, replaced in place: study runners and job schedulers
  # that watch the PID keep watching the training.
  assert int(pid) == proc.pid


def test_the_unless_flag_keeps_the_process_as_it_is():
  out = subprocess.run(
      [sys.executable, '-c', _PROGRAM, '--baseline=../old'],
      env=_clean_environment(), capture_output=True, text=True, check=True)
  assert out.stdout.split(' ', 2)[1] == 'None'


@pytest.mark.parametrize('module', [
    'benchmark_attention', 'benchmark_decode', 'benchmark_exact_attention',
    'benchmark_forms', 'benchmark_step'])
def test_importing_a_benchmark_leaves_the_importer_as_it_is(module):
  # A benchmark re-executed itself at import: a test importing it would
  # have restarted pytest. Each restarts only when run as a program.
  code = (f'import os; import experiments.{module}; '
          "print(os.environ.get('GLIBC_TUNABLES'))")
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO,
                       env=_clean_environment(), capture_output=True,
                       text=True, check=True)
  assert out.stdout.strip().splitlines()[-1] == 'None'
