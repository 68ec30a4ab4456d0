"""Seeing a job: logs (JSON lines, redacted), Prometheus metrics, the progress bar, and
``inspect`` (what a run wrote, from its control files).

May import: :mod:`batchnlp.execution` and everything below it.
"""
