"""Test-wide settings: several CPU devices and fast compiles.

XLA_FLAGS must be set before jax is imported anywhere, hence here.
"""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # noqa: E402

# Tests use tiny models; skipping optimisation passes makes compiles much faster.
jax.config.update('jax_disable_most_optimizations', True)
