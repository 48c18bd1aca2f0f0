"""Retrieval quality: ground truth, metrics, and the evaluation of an index."""
