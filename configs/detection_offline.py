r"""Detection transfer in miniature, offline: the paper in miniature's detection part.

    python -m lth_jax.main --config=configs/detection_offline.py --workdir=/tmp/lth_det

The paper's detection study (YOLOv4 with a ResNet-50 on VOC) as
configs/paper_offline.py:all_tasks runs it, on that one task:

1. θ_Sup, θ_SimCLR, θ_MoCo: the ResNet-18s (width 1/4) lth_jax ships, read as released
   checkpoints (nothing is pre-trained), and their upstream tickets found by IMP on
   Animal-MNIST's classes 0-4 exactly as configs/paper_offline.py finds them.
2. YOLO's heads on few-shot detection canvases of those classes, as VOC's classes are
   ImageNet's (`animal_a_canvas_det_few`: 100 training canvases), with its recipe
   (`lth_jax.experiments.presets.FEW_SHOT_RECIPES`: the heads on the backbone's stages,
   without the reference's SPP + PANet neck, SGD over 60 epochs of batch 8, the first 8 a
   linear warm-up, then cosine, the backbone at a fifth of the heads' rate): scratch and each θ_p
   dense (5 seeds), every second upstream ticket of each (3 seeds), random global pruning
   and random pruning with the tickets' layer profile, and task-specific tickets found by
   IMP on the canvases from θ_Sup (20%, 36%). CIoU + focal objectness + BCE classes, VOC07
   11-point mAP at IoU 0.5 (headline) and over 0.50:0.05:0.95.
3. results_animal_a_canvas_det_few.csv/.json (mAP@0.5 and mAP@[.5:.95]),
   map_vs_sparsity_animal_a_canvas_det_few.png, table_animal_a_canvas_det_few.md,
   extreme_sparsity.csv and verdict.txt.

About 5.5 hours on a 2-core CPU (86 fine-tunes of about 3.6 minutes, upstream IMP 16
minutes). Its workdir is a part of configs/paper_offline.py:all_tasks's: rerun there with
that config, nothing it trained is trained again (the segmentation part's workdir does not
take this part: run `:all_tasks` there instead). The reference's neck and one learning rate,
at the rate they were measured with (0.01, the recipe until bed18fa; configs/detection_voc.py
keeps both): `--config.paper.task_recipes.animal_a_canvas_det_few.model.neck=panet`,
`...optim.head_lr_scale=1` and `...optim.learning_rate=0.01`.

`:tiny` is the smoke run of the tests: the reference's YOLOv4 neck and heads on digit
canvases (`digit_canvas_det_small`: the first 256 less the 13 whose boxes are all
difficult), the supervised θ_p pre-trained in the workdir on the scikit-learn digits, one
ticket, two rounds of task-specific IMP, one seed, 3 epochs
(`lth_jax.experiments.presets.canvas_study`).
"""

import pathlib

from lth_jax.experiments import config as config_lib
from lth_jax.experiments import presets

# The paper run it is a part of: the file beside this one, whatever configs/ the package finds.
WHOLE = f'{pathlib.Path(__file__).with_name("paper_offline.py")}:all_tasks'


def get_config(variant: str = ''):
  return presets.dense_study('animal_a_canvas_det_few', variant,
                             lambda: config_lib.load_config(WHOLE))
