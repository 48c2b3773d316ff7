"""Benchmark suites of ssmppl against its peers; run them with ``python -m benchmarks.run <suite>``."""
