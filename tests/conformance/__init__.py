"""The three conformance suites, each enrolling every registered member automatically: input and
output formats (test_formats), tasks (test_tasks) and outputs (test_outputs)."""
