"""Instruments for tests and benchmarks: a Lambda context for local invocations,
botocore hooks, and request counting."""
