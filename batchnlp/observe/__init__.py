"""Seeing a job: logs (JSON lines, redacted), CloudWatch metrics (one EMF line), the progress
bar, the summary lines a finished run prints, and ``inspect`` (what a run wrote, from its control
files).

May import: :mod:`batchnlp.execution` and everything below it.
"""
