"""Progress lines for the person at the console, from the chief process only.

    console.say('round 3: sparsity 48.80%')

Printed rather than logged, so that notebooks and terminals show them whatever the
absl verbosity; on several hosts only process 0 prints.
"""

from __future__ import annotations

import jax


def is_chief() -> bool:
  """Whether this process writes shared outputs and prints (process 0).

  Returns:
    True on process 0.
  """
  return jax.process_index() == 0


def say(message: str) -> None:
  """Prints one progress message on the chief process.

  Args:
    message: the text.
  """
  if is_chief():
    print(message, flush=True)
