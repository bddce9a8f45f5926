"""Console entry points: thin wrappers that parse, call the library and print."""
