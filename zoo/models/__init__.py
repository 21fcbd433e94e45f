"""zoo's built-in architectures.

Each module registers its models when imported; zoo imports them through its own
``zoo.models`` entry points, exactly like a third-party plugin.
"""
