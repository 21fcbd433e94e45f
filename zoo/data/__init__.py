"""Datasets: facts, loaders and batched augmentation.

Owns: dataset facts (:mod:`~zoo.data.catalog`, no torch), loading the built-in datasets into
in-memory uint8 splits and batching them (:mod:`~zoo.data.datasets`), your own image
folders (:mod:`~zoo.data.imagefolder`: decoded once by :mod:`~zoo.data.images`, cached, or
streamed by :mod:`~zoo.data.streamed`), vectorised augmentation (:mod:`~zoo.data.augment`),
scoring a classifier on a split in one pass (:mod:`~zoo.data.metrics`: the trainer's
evaluation and ``zoo eval`` share it, so they cannot disagree), and a model's data config
with the inference preprocessing of one image (:mod:`~zoo.data.transforms`; PNGs checked by
:mod:`~zoo.data.png` before libpng sees them).

May import: the base modules only. It knows nothing of models, recipes or training: the
trainer passes it plain settings.
"""
