"""The leaf layer: types, errors, records, results, vector helpers, the atomic write, progress (no cbir imports)."""
