"""Architectures and the registry that names them.

Owns: the model registry (:mod:`~zoo.models.registry`: register, look up, list, build with
fresh weights), plugin discovery through the ``zoo.models`` entry points
(:mod:`~zoo.models.plugins`), and the built-in families (:mod:`~zoo.models.mlp`,
:mod:`~zoo.models.resnet`, :mod:`~zoo.models.mixer`). No architecture-specific code lives
outside this package.

May import: the base modules (errors, env, _io, _version) only. It knows nothing of weights
files, the Hub, recipes or training.
"""

from zoo.models import plugins as _plugins  # installs plugin discovery into the registry

del _plugins
