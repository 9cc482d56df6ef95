"""Training: optimizer recipes, jitted masked steps, the resumable fit loop, evaluators.

    recipe = optim.Recipe(learning_rate=0.05, num_epochs=2, schedule='cosine')
    result = training.fit(model, variables, masks, recipe, train_batches=..., evaluator=...,
                          metric='accuracy', objective=..., steps_per_epoch=...,
                          checkpoint_dir=...)

Modules: `optim` (Recipe -> optax), `steps` (TrainState, objective protocols, sharded
masked train steps), `loop` (`fit`, the resumable loop; DivergenceError), `evaluators` (exact
padded evaluation, the kNN monitor), `gradients` (a loss's gradient over a few batches,
for saliency criteria). Knows nothing of configs, datasets or tasks: data
comes in as batch iterators, losses as objectives and metrics as evaluators. May import
`lth_jax.masks` and `lth_jax.runtime`.
"""

from lth_jax.training.evaluators import Evaluator
from lth_jax.training.loop import FitResult, fit
from lth_jax.training.optim import Recipe, compute_dtype
from lth_jax.training.steps import (Objective, StatefulObjective, TrainState, make_train_steps,
                                    next_keys)

__all__ = ['Evaluator', 'FitResult', 'Objective', 'Recipe', 'StatefulObjective', 'TrainState',
           'compute_dtype', 'fit', 'make_train_steps', 'next_keys']
