"""Weights: files, the Hub, the local tag store, and ``zoo.create``.

Owns: model files (:mod:`~zoo.weights.files`: ``model.safetensors`` + ``config.json``,
written and loaded strictly, and exports), the Hugging Face Hub (:mod:`~zoo.weights.hub`),
tagged local weights (:mod:`~zoo.weights.store`), and the factory that builds a model from
any source (:mod:`~zoo.weights.factory`: name, ``NAME.TAG``, ``hf-hub:``, directory).

May import: the base modules, :mod:`zoo.models` (to build architectures) and
:mod:`zoo.runs` (file names, model cards). Not recipes or training.
"""
