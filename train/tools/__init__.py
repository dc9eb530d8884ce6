"""Tools around runs: the benchmark and the comparison of runs and sweeps."""
