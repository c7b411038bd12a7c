"""Reports from run directories: a table per variant (report.md, report.csv) and PNG figures.

    python -m bnresearch.report DIR [--target_accuracy=0.95]

Reads files only and imports no training code (no JAX) and nothing of the sweep, which imports
the report: it runs on a laptop holding a copy of the sweep directory, and while the sweep is
still training. The records both read, sweep.json and the names of variants, live here.
"""
