"""MedQ-Bench scoring for medq-jax.

The MedQ-Bench protocol (Liu et al., "MedQ-Bench: Evaluating and Exploring Medical
Image Quality Assessment Abilities in MLLMs") made runnable offline:

* ``items`` / ``io_files``: the released VLMEvalKit TSV files and our JSONL form.
* ``extraction`` / ``perception``: multiple-choice scoring with breakdowns and CIs.
* ``prompts``: the paper's prompts (appendix A.3), word for word.
* ``judge_*`` / ``reasoning``: the four-dimension judging protocol.
* ``alignment``: human-judge agreement (quadratic weighted kappa).
* ``generator``: MedQ-Bench-style items from our own data pipeline examples.
* ``model_interface``: the protocol our own model implements to be scored.
* ``restoration``: PSNR/SSIM tables for restored images.
* ``report`` / ``plots``: tables in the paper's layouts.
"""
