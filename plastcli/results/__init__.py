"""Results: stores and their labels, the statistics and collapse rules on stored arrays,
tables, summaries and merges. Nothing here imports torch (tests/test_layers.py)."""
