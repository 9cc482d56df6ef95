"""Where datasets come from: the registry of sources a `DatasetInfo.source` names.

    source = sources.get(info.source)
    source.shipped                        # ships with lth_jax: reads nothing from data_dir
    source.check(info, data_dir, labels)  # raises unless every split can be read
    source.arrays(info, split)            # a split held in memory (None: files, tf.data)

`lth_jax.data` registers the built-in ones: 'tfds' (tensorflow-datasets prepared under a
data_dir), 'offline' (arrays shipped in lth_jax/data/offline), 'canvases' (generated from
a shipped set, `lth_jax.data.canvases`) and 'voc' (a VOCdevkit folder, `lth_jax.data.voc`).
Every pipeline asks the source, never its name: a new source is one `register` call. One
holding class labels in memory (arrays made by a test, say) has its datasets read,
evaluated without TensorFlow and kept on the devices as the shipped sets are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from lth_jax.registry import Registry

if TYPE_CHECKING:
  from lth_jax.data.registry import DatasetInfo


@dataclasses.dataclass(frozen=True)
class Source:
  """One source of datasets.

  Attributes:
    name: the registry key (`DatasetInfo.source`).
    shipped: its datasets ship with lth_jax (or are made from what does): nothing is read
      from `data_dir`, and an experiment refuses one that only such datasets would read.
    labels: the kinds of labels its examples hold (`lth_jax.data.LABELS`); only a source
      holding 'class' labels serves `train_batches`, `eval_batches` and `on_device`.
    check: (info, data_dir, labels) -> None; raises unless every split of `info` can be
      read for a task reading `labels` (DatasetNotFoundError, saying how to get it).
    arrays: (info, split) -> the split's examples as numpy arrays held in memory, read
      without TensorFlow: 'image' uint8 [N, H, W, C] and the labels ('label' [N] for
      class labels; the canvases' 'segmentation', 'boxes', ... as
      `canvases.make_canvases` returns them). None: files read through tf.data.
  """
  name: str
  shipped: bool
  labels: tuple[str, ...]
  check: Callable[[DatasetInfo, str | None, str], None]
  arrays: Callable[[DatasetInfo, str], dict[str, np.ndarray]] | None = None


SOURCES: Registry[Source] = Registry('dataset source')


def register(source: Source) -> Source:
  """Adds a source under `source.name` (what `DatasetInfo.source` names)."""
  return SOURCES.register(source.name, source)


get = SOURCES.get
