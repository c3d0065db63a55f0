"""Provenance: who made an edit and whether its bytes are the ones they signed.

The only package that touches keys. ``keys`` creates and loads the Ed25519 signing keys (kept outside
every repository), ``allowed_signers`` reads and writes git's allowed-signers file, and ``signing``
makes and checks the ``edit.sig`` envelopes that let an exported edit be verified without git.
"""
