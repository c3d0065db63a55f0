"""Gates: the proof that an edit does what it should and nothing else (stage ⑤ of DESIGN.md §2)."""
