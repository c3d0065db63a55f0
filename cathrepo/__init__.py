"""cathrepo: git for model edits.

Every edit is a low-rank delta on named weights, stored in PEFT's LoRA layout, proven by gates and
recorded as a signed git commit. Heavy libraries (torch, transformers, DVC) are imported lazily so
that ``import cathrepo`` and ``cathrepo --help`` stay fast.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
