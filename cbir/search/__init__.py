"""Index -> results: the searcher interface, exact and approximate search, re-ranking, queries."""
