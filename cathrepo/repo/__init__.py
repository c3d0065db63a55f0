"""Repository verbs: the Repo class and one module per writing verb (init, edit, commit, revert, ...)."""
