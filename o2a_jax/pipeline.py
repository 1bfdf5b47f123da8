"""The contract's name for sampling one chunk: `o2a_jax.pipeline.generate_chunk`.

The sampler lives in `o2a_jax.sampling.chunk`; this module only keeps the public name working.
"""

from o2a_jax.sampling.chunk import generate_chunk

__all__ = ["generate_chunk"]
