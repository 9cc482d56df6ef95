"""PyTorch interop: the reference's checkpoints and mask files, read and written exactly.

    variables = checkpoints.load_pytorch('moco_v2_800ep_pretrain.pth.tar', model)
    ticket = mask_files.from_pytorch('mask_level_4.pth', like=variables['params'])

Modules: `torch_names` (the one key map between torchvision/reference state-dict keys
and Flax paths), `state_dicts` (reading .pth/.safetensors/.npz files and mappings,
unwrapping, the backbone's keys), `checkpoints` (torchvision, MoCo v2, SimCLR and the reference's
segmentation checkpoints <-> Flax variables), `mask_files` (the reference's
'<layer>.weight_mask' files <-> mask trees). torch is imported only to read or write
`.pth` files. May import `lth_jax.models`, `lth_jax.masks` and `lth_jax.runtime`.
"""

from lth_jax.errors import CheckpointError
from lth_jax.interop.checkpoints import load_pytorch, read_state_dict, to_pytorch

__all__ = ['CheckpointError', 'load_pytorch', 'read_state_dict', 'to_pytorch']
