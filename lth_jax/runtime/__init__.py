"""The runtime around every run: devices, processes, console, files, workdirs.

Modules: `sharding` (the 'data' mesh, replicated and batch shardings, joining several
processes, the chief process and barriers), `console` (progress lines and text tables),
`files` (atomic writes of JSON, CSV, npz and figures), `paths` (the workdir's layout:
every folder and file name), `tree_io` (pytrees on disk with orbax: collective saves,
process-local loads), `workdir` (a workdir owned by one
experiment: what a rerun may change, as rules the experiment layer gives; divergence
records). Reads no config. Imports only jax, orbax, numpy, absl, flax and `lth_jax.errors`;
everything else may import it.
"""
