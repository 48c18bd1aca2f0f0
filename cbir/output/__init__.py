"""Results -> people and programs: result records, JSON, text listings and plots."""
