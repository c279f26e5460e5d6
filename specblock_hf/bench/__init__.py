"""Benchmark tooling: prompts, methods and reports (imported lazily; not part of the core import)."""
