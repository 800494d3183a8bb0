"""fashion-soak: a bounded soak test of a real server process (mixed traffic + faults)."""
