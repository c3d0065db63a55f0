"""MEMIT: batches of facts written over several layers (:mod:`cathrepo.edits.memit.method`)."""
