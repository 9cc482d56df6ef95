"""Progress lines for the person at the console, from the chief process only.

    console.say('round 3: sparsity 48.80%')

Printed rather than logged, so that notebooks and terminals show them whatever the
absl verbosity; on several hosts only process 0 prints.
"""

from __future__ import annotations

from lth_jax import sharding


def say(message: str) -> None:
  """Prints one progress message on the chief process.

  Args:
    message: the text.
  """
  if sharding.is_chief():
    print(message, flush=True)
