"""What a command or a request does: settings, queries, near-duplicates, evaluation, export."""
