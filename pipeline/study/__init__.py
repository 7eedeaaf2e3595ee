"""Studies: the paper's method comparison as cells of crild runs, their records and report."""
