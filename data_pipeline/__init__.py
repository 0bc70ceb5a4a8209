"""MedQ-UNI data: sources, degradations, descriptions, ArrayRecord precompute, Grain loader.

Knows nothing of the model: it yields examples as defined in `data_pipeline.example`.
Entry points: `precompute.run_precompute(config)` and `loader.make_loader(config, split)`.
"""
