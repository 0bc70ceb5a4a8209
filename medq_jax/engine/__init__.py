"""MedQ-Engine (shared/papers/medq-engine.txt §2): the closed loop that mines the model's
persistent failures on a dev set, retrieves similar images from a large pool, annotates them
(oracle, self, expert review) and fine-tunes on them. The top library layer: it drives
`medq_jax.infer`, `medq_jax.train` and `medq_jax.bench`; see docs/engine.md."""
