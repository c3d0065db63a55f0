"""Facts, relation templates and probes (stages ① and ② of DESIGN.md §2)."""
