"""The CI entry point's exit trap: it cleans up without changing the run's exit status."""

import pathlib
import re
import subprocess
import textwrap
import time

import pytest

CI_RUN = pathlib.Path(__file__).resolve().parent.parent / ".ci" / "run"


def _exit_trap() -> str:
  """The command of the last `trap '...' EXIT` in .ci/run (the one in force at exit)."""
  traps = re.findall(r"^trap '(.*?)' EXIT$", CI_RUN.read_text(), flags=re.M | re.S)
  assert traps, f"{CI_RUN} sets no EXIT trap"
  return traps[-1]


def _run(tmp_path: pathlib.Path, body: str,
         install: str = 'sleep 30; true') -> tuple[subprocess.CompletedProcess, list]:
  """Runs `body` under .ci/run's exit trap, `install` standing for the background install."""
  cache = tmp_path / "cache"
  cache.mkdir()
  log = tmp_path / "install.log"
  log.write_text("")
  script = textwrap.dedent("""\
      set -euo pipefail
      export JAX_COMPILATION_CACHE_DIR={cache}
      MAIN_INSTALL_LOG={log}
      ( {install} ) &
      MAIN_INSTALL=$!
      echo $MAIN_INSTALL > {tmp}/pid
      trap '{trap}' EXIT
      {body}
      """).format(cache=cache, log=log, tmp=tmp_path, trap=_exit_trap(), body=body,
                  install=install)
  done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
  return done, [cache, log]


@pytest.mark.parametrize("install, body, rc", [
    # The install finished: nothing is left for the trap to kill.
    ("true", "wait $MAIN_INSTALL", 0),
    ("sleep 30; true", "false", 1),
])
def test_the_exit_trap_keeps_the_exit_status_and_removes_its_files(tmp_path, install, body, rc):
  # A finished install must not turn a green run red, and a failed step stays failed; both
  # remove the compilation cache and the install log.
  done, files = _run(tmp_path, body, install)
  assert done.returncode == rc, done.stderr
  assert not any(f.exists() for f in files)


def _gone(pid: int) -> bool:
  """Whether a process has ended (a zombie not yet reaped counts as ended)."""
  try:
    return pathlib.Path(f'/proc/{pid}/stat').read_text().split(')')[-1].split()[0] == 'Z'
  except FileNotFoundError:
    return True


def test_an_early_exit_stops_the_background_install(tmp_path):
  # The step fails once the install's subshell has started its child.
  done, _ = _run(tmp_path, f'until pgrep -P $MAIN_INSTALL > {tmp_path}/child; do sleep 0.05; '
                           'done; false')
  assert done.returncode == 1
  # The subshell and its child (pip, in .ci/run) are stopped, not left to run their 30 s.
  pids = [int((tmp_path / 'pid').read_text()), int((tmp_path / 'child').read_text())]
  deadline = time.monotonic() + 5
  while not all(map(_gone, pids)) and time.monotonic() < deadline:
    time.sleep(0.05)
  assert all(map(_gone, pids))
