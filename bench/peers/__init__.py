"""PyTriton and MLServer beside fashion-serve in one run: ``python -m bench.peers``."""
