"""Puts configs/ into the wheel as the package data `lth_jax/configs` (where
`lth_jax.experiments.config.CONFIG_DIR` finds it); a checkout keeps it at the top."""

import setuptools

setuptools.setup(
    packages=[*setuptools.find_namespace_packages(include=['lth_jax', 'lth_jax.*']),
              'lth_jax.configs'],
    package_dir={'lth_jax.configs': 'configs'},
)
