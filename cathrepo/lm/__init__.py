"""The language-model core beneath every stage: tokens, batches, the head, scoring, decoding, hooks.

Probes, attribution, the edit methods, training and the gates all run the same few forward passes:
score continuations teacher-forced, decode greedily, read or change a module's activations. They live
here once, below every stage, and import nothing from the stages (the import-linter contract in
``pyproject.toml`` keeps it so). Heavy libraries are imported inside functions.
"""
