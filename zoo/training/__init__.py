"""Training: one loop from a recipe to a run directory, and what surrounds it.

Owns: the loop and its state (:mod:`~zoo.training.loop`), evaluation, optimisers and
schedules, checkpoints, torchrun/DDP (:mod:`~zoo.training.distributed`), sweeps, launching
a recipe (:mod:`~zoo.training.launch`), progress reporting, the precision a run trains in
(:mod:`~zoo.training.precision`), and the trainer's decisions about run directories
(:mod:`~zoo.training.rundir`).

May import: the base modules, :mod:`zoo.models`, :mod:`zoo.data`, :mod:`zoo.runs`,
:mod:`zoo.weights` and :mod:`zoo.recipe`. Not :mod:`zoo.analysis` or the CLI.
"""
