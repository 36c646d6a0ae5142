"""The router's benchmark suite: ``python -m bench.run`` (see docs/performance.md)."""
