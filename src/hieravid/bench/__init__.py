"""Speed benchmarks (they print what they measured, on which machine and shape; they are not tests)."""
