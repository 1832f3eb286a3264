"""The matching core, with no I/O: fusion, the in-memory index, the threshold policy, the decision."""
