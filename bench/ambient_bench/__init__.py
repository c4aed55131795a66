"""Helpers of bench/ambient.py: testbed, load generators, /proc sampling, Envoy configs, report."""
