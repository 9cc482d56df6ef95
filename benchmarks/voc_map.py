"""Time `lth_jax.metrics.voc_map` on a VOC07-test-sized evaluation (4,952 images, 20 classes).

    python benchmarks/voc_map.py

Random ground truths (1-5 objects an image, 15% difficult) and detections around them
(jittered, duplicated, mislabelled, plus background boxes), ~60 detections an image as
a detector at score threshold 0.005 leaves after NMS. Prints the seconds of mAP@0.5 and
of mAP@[.5:.95] (ten thresholds) for both AP definitions.
"""

from __future__ import annotations

import time

import numpy as np

from lth_jax.metrics import voc_map, voc_map_range

IMAGES, CLASSES, DETECTIONS = 4952, 20, 60


def dataset(seed: int = 0):
  rng = np.random.default_rng(seed)
  detections, ground_truths = [], []
  for _ in range(IMAGES):
    m = rng.integers(1, 6)
    xy = rng.uniform(0, 400, (m, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, 150, (m, 2))], axis=1)
    classes = rng.integers(0, CLASSES, m)
    source = rng.integers(0, m, DETECTIONS)
    jitter = rng.normal(0, 0.2, (DETECTIONS, 4)) * np.tile(
        boxes[source, 2:] - boxes[source, :2], 2)
    labels = np.where(rng.random(DETECTIONS) < 0.7, classes[source],
                      rng.integers(0, CLASSES, DETECTIONS))
    detections.append(np.column_stack([boxes[source] + jitter, rng.random(DETECTIONS),
                                       labels]))
    ground_truths.append({'boxes': boxes, 'classes': classes,
                          'difficult': rng.random(m) < 0.15})
  return detections, ground_truths


def main() -> None:
  detections, ground_truths = dataset()
  print(f'{IMAGES} images, {sum(len(d) for d in detections)} detections, {CLASSES} classes')
  for use_07 in (True, False):
    for name, fn in (('mAP@0.5', voc_map), ('mAP@[.5:.95]', voc_map_range)):
      tic = time.perf_counter()
      result = fn(detections, ground_truths, CLASSES, use_07_metric=use_07)
      print(f'{name:13s} use_07_metric={use_07!s:5s}: {time.perf_counter() - tic:6.3f} s '
            f'(mAP {result["map"]:.4f})')


if __name__ == '__main__':
  main()
