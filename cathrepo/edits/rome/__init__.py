"""ROME (Meng et al. 2022) with the r-ROME consistency fix: params, covariance, context prefixes, the key
(``key``: k* and u), the value (``value``: v* by Adam, ``min_norm``: by the least change, both on the
rows of ``rows``), null-space protection (``protect``), and the method."""
