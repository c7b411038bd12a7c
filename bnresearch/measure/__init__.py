"""Measurements of a network or a batch, as pure functions that training can log."""
