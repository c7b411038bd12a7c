"""Measurements of a network or a batch (heterogeneity score, gradient noise scale), as pure
functions that training logs."""
