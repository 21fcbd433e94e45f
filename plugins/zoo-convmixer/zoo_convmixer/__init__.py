"""zoo-convmixer: an example zoo plugin that adds ConvMixer models for 32x32 images.

zoo imports this module through the ``zoo.models`` entry point in setup.cfg
(``convmixer = zoo_convmixer``); importing it imports the model file, whose
``@register_model`` builders register ``convmixer_256_8`` and ``convmixer_128_4``.
"""

from zoo_convmixer.convmixer import ConvMixer, ConvMixerLayer

__all__ = ["ConvMixer", "ConvMixerLayer"]
__version__ = "0.1.0"
