"""llmos_jax: build, train, evaluate and serve language models with JAX and Flax NNX.

Importing the package is cheap; heavy layers (data, training) are imported by
their own subpackages only when used.
"""

__version__ = "0.1.0"
