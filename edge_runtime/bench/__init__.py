"""Benchmarks (``hffm bench ...``): figures printed and saved, settings compared side by side in one run."""
