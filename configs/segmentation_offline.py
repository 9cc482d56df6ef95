r"""Segmentation transfer in miniature, offline: the paper in miniature's segmentation part.

    python -m lth_jax.main --config=configs/segmentation_offline.py --workdir=/tmp/lth_seg

The paper's segmentation study (its Table 3 / Figure 5: DeepLabV3+ on VOC 2012) as
configs/paper_offline.py:all_tasks runs it, on that one task:

1. θ_Sup, θ_SimCLR, θ_MoCo: the ResNet-18s (width 1/4) lth_jax ships, read as released
   checkpoints (nothing is pre-trained), and their upstream tickets found by IMP on
   Animal-MNIST's classes 0-4 exactly as configs/paper_offline.py finds them.
2. DeepLabV3+ on few-shot segmentation canvases of the other five classes
   (`animal_canvas_seg_few`: 200 training canvases) with its recipe
   (`lth_jax.experiments.presets.FEW_SHOT_RECIPES`: the reference's SGD, poly schedule and
   head at 10x the backbone's rate, 30 epochs of batch 16): scratch and each θ_p dense
   (5 seeds), every second upstream ticket of each (3 seeds), random global pruning and
   random pruning with the tickets' layer profile, and task-specific tickets found by IMP
   on the canvases from θ_Sup (20%, 36%).
3. results_animal_canvas_seg_few.csv/.json, miou_vs_sparsity_animal_canvas_seg_few.png,
   table_animal_canvas_seg_few.md, extreme_sparsity.csv and verdict.txt, as paper mode
   writes them.

About 5.5 hours on a 2-core CPU (86 fine-tunes of about 3.6 minutes, upstream IMP 16
minutes). Its workdir is a part of configs/paper_offline.py:all_tasks's: rerun there with
that config, nothing it trained is trained again (the detection part's workdir does not take
this part: run `:all_tasks` there instead).

`:tiny` is the smoke run of the tests: DeepLabV3+ on digit canvases
(`digit_canvas_seg_small`, 256 training canvases), the supervised θ_p pre-trained in the
workdir on the scikit-learn digits, one ticket, two rounds of task-specific IMP, one seed,
3 epochs (`lth_jax.experiments.presets.canvas_study`).
"""

import pathlib

from lth_jax.experiments import config as config_lib
from lth_jax.experiments import presets

# The paper run it is a part of: the file beside this one, whatever configs/ the package finds.
WHOLE = f'{pathlib.Path(__file__).with_name("paper_offline.py")}:all_tasks'


def get_config(variant: str = ''):
  return presets.dense_study('animal_canvas_seg_few', variant,
                             lambda: config_lib.load_config(WHOLE))
