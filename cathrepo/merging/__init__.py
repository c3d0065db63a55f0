"""Merging: consolidating edits and finding semantic conflicts (stage ⑦ of DESIGN.md §2).

- :mod:`~cathrepo.merging.consolidate`: ``consolidate(deltas, "svd:8")``, the one entry point that turns an
  ordered stack of deltas into one delta (a pack), with each module's rank and truncation error;
- :mod:`~cathrepo.merging.strategies`: the strategies it can use (``cat``, ``svd:R``, ``ties``, ``dare``),
  a base class plus a registry so plug-ins can add more;
- :mod:`~cathrepo.merging.factor`: the truncated SVD every strategy but ``cat`` ends with;
- :mod:`~cathrepo.merging.conflicts`: the same fact given different targets on the two sides of a merge,
  or an edit that one side reverted and the other keeps.

Every strategy works on each module's full ΔW, never on the A and B factors separately (averaging the
factors adds cross terms ``Bᵢ Aⱼ``: a known fault of naive adapter merging). The package knows nothing of
git: callers hand it deltas, records and id sets. This module imports nothing, so that reading conflicts
does not import torch.
"""
