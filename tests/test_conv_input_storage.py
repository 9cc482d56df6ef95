"""benchmarks/conv_input_storage.py measures what it says: the stored variant keeps every
convolution's input behind a conditional XLA compiles, and its gradients are the plain
ones up to float rounding."""

import flax.linen as nn
import jax
import numpy as np

import conftest
from lth_jax.models import create_model, init_variables
from lth_jax.tasks.classification import cross_entropy


def test_the_stored_variant_compiles_a_conditional_per_convolution_and_keeps_the_gradient():
  bench = conftest.load_script('benchmarks/conv_input_storage.py')
  model = create_model('resnet18', num_classes=5, stem='cifar', width_multiplier=1 / 16,
                       in_channels=1)
  variables = init_variables(model, jax.random.key(0), 16)
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(4, 16, 16, 1)).astype(np.float32),
           'label': rng.integers(0, 5, 4).astype(np.int32)}
  stored = bench._Storing(cross_entropy)
  assert stored.__name__ == cross_entropy.__name__   # anything else is the objective's

  def grad(objective):
    return jax.jit(jax.grad(
        lambda p: objective(model, p, variables['batch_stats'], batch)[0]))

  grads = {name: grad(fn) for name, fn in (('plain', cross_entropy), ('stored', stored))}
  hlo = {name: g.lower(variables['params']).compile().as_text() for name, g in grads.items()}
  convolutions = sum(isinstance(m, nn.Conv) for m in _modules(model, variables))
  assert convolutions == 20   # ResNet-18: the stem, 16 in the blocks, 3 shortcuts
  assert hlo['plain'].count(' conditional(') == 0
  # One per convolution in the forward pass (the first one's input needs no gradient, so
  # its backward conditional may go).
  assert hlo['stored'].count(' conditional(') >= convolutions
  plain, with_stored = (g(variables['params']) for g in grads.values())
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(with_stored)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _modules(model, variables):
  """Every module the forward pass calls."""
  seen = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == '__call__':
      seen.append(context.module)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    model.apply(variables, np.zeros((1, 16, 16, 1), np.float32), train=False)
  return seen
