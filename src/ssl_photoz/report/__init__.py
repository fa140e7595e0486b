"""The report of a run: figures, summary.md and the galaxy explorer."""
