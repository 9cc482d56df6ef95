"""The CI entry point's exit trap: it cleans up without changing the run's exit status."""

import pathlib
import re
import subprocess
import textwrap

import pytest

CI_RUN = pathlib.Path(__file__).resolve().parent.parent / ".ci" / "run"


def _exit_trap() -> str:
  """The command of the last `trap '...' EXIT` in .ci/run (the one in force at exit)."""
  traps = re.findall(r"^trap '(.*?)' EXIT$", CI_RUN.read_text(), flags=re.M | re.S)
  assert traps, f"{CI_RUN} sets no EXIT trap"
  return traps[-1]


def _run(tmp_path: pathlib.Path, body: str) -> tuple[subprocess.CompletedProcess, list]:
  cache = tmp_path / "cache"
  cache.mkdir()
  log = tmp_path / "install.log"
  log.write_text("")
  script = textwrap.dedent("""\
      set -euo pipefail
      export JAX_COMPILATION_CACHE_DIR={cache}
      MAIN_INSTALL_LOG={log}
      ( sleep 30 ) &
      MAIN_INSTALL=$!
      echo $MAIN_INSTALL > {tmp}/pid
      trap '{trap}' EXIT
      {body}
      """).format(cache=cache, log=log, tmp=tmp_path, trap=_exit_trap(), body=body)
  done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
  return done, [cache, log]


@pytest.mark.parametrize("body, rc", [
    # The install finished: nothing is left for the trap to kill.
    ("kill $MAIN_INSTALL; wait $MAIN_INSTALL || true", 0),
    ("false", 1),
])
def test_the_exit_trap_keeps_the_exit_status_and_removes_its_files(tmp_path, body, rc):
  # A finished install must not turn a green run red, and a failed step stays failed; both
  # remove the compilation cache and the install log.
  done, files = _run(tmp_path, body)
  assert done.returncode == rc, done.stderr
  assert not any(f.exists() for f in files)


def test_an_early_exit_stops_the_background_install(tmp_path):
  done, _ = _run(tmp_path, "false")
  assert done.returncode == 1
  pid = int((tmp_path / "pid").read_text())
  # The subshell is gone (killed by the trap, not left to run its 30 s).
  assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0
