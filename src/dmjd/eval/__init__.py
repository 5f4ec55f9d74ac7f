"""Evaluation: what a pre-trained encoder is worth, and figures of what the model does."""
