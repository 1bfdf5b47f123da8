"""`o2a eval`: frame and video metrics of generated clips against ground-truth clips
(`suite.evaluate_folders`; the metrics themselves live in `o2a_jax.metrics`)."""
