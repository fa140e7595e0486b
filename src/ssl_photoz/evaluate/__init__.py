"""Predictions and their scores: point metrics, PDF metrics, leakage, the pretraining probe."""
