"""Analysis: measuring models and turning runs into figures and reports.

Owns: the benchmark harness (:mod:`~zoo.analysis.bench`), first-layer visualisations
(:mod:`~zoo.analysis.viz`), the report of sweeps and runs (:mod:`~zoo.analysis.report`),
``zoo eval`` (:mod:`~zoo.analysis.evaluate`) and ``zoo predict``
(:mod:`~zoo.analysis.predict`).

May import: the base modules, :mod:`zoo.models`, :mod:`zoo.data`, :mod:`zoo.runs`,
:mod:`zoo.weights` and :mod:`zoo.recipe`. Not :mod:`zoo.training` (it reads the runs
training leaves, through :mod:`zoo.runs.files`) or the CLI.
"""
