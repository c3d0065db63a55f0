"""ROME (Meng et al. 2022) with the r-ROME consistency fix: params, covariance, compute_u, compute_v, method."""
