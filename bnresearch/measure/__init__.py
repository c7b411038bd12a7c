"""Measurements taken during training, outside the train step (the gradient noise scale)."""
