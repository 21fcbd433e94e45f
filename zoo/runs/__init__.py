"""Run directories: the files a training run leaves, and what is drawn and written from them.

Owns: the run-directory format (:mod:`~zoo.runs.files`: file names, the one reader and
writer of each file), curves and figures (:mod:`~zoo.runs.plots`) and the model card
(:mod:`~zoo.runs.card`).

May import: the base modules only. Runs are plain files: this part needs neither the
recipe schema nor the trainer to read them.
"""
