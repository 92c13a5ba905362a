"""`rainctl bench`: benchmarks that print figures (docs/benchmarks.md), not pass/fail tests."""
