"""JAX/Flax adapter: trace a Flax NNX model trained with optax (see docs/jax.md)."""

from .tracer import FlaxTracer

__all__ = ["FlaxTracer"]
