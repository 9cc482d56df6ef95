"""lth_jax: lottery tickets in pre-trained ResNets with JAX/Flax."""

__version__ = '0.1.0'
