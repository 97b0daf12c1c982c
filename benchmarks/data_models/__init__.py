"""Real data and trained models for the benchmarks."""
