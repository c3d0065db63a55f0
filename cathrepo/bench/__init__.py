"""Benchmarks: single edits, edits through the repository, gate calibration (``cathrepo bench …``)."""
