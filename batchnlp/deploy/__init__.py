"""Running a job elsewhere: AWS Batch job definitions and submission (plain, sharded, scheduled),
their secret references, and backfills of many dated runs.

May import: :mod:`batchnlp.observe`, :mod:`batchnlp.execution` and everything below them (never
:mod:`batchnlp.distillation`).
"""
