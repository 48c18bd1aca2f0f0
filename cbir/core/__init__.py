"""The leaf layer: types, errors, records, results, vector helpers, the atomic write, progress.

It imports nothing of cbir's."""
