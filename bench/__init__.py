"""Benchmarks (docs/performance.md): each script prints its figures beside its targets and the peers measured in the same run."""
