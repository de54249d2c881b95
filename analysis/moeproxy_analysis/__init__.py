"""Reading and judging moeproxy result files (HDF5 schema v1, docs/hdf5-schema.md).

The command-line tools `analysis/moeproxy-report` and `analysis/moeproxy-accept` are thin
wrappers around `report.main` and `accept.main`; `results.load` is the one place that knows
the file layout, so a schema change touches one module.
"""

SCHEMA_VERSION = 1
