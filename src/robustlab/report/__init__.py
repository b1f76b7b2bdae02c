"""Reports and figures: pure functions of result JSON files (matplotlib, Agg backend)."""
