"""Desktop tasks: families, splits, verifiers and the scripted expert."""
