"""Model transforms: LoRA adapters, int8 weight quantization, distillation.

Each transform rewrites the `Dense` projections that `llmos_jax.models.builders`
builds, in place on a built model, so every family gets it without a model edit.
"""
