"""Vectors -> ranked rows: the searcher interface, exact and approximate search, filters, re-ranking.

No storage, no network."""
