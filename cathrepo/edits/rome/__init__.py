"""ROME (Meng et al. 2022) with the r-ROME consistency fix: params, covariance, context prefixes, the key
(``key``: k* and u), the value (``value``: v*), null-space protection (``protect``), and the method."""
