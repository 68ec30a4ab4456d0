"""Where the workers come from: a local Dask cluster (fork server, one worker per core or GPU),
an AWS Batch multi-node cluster (main and child nodes), and the mutual TLS that keeps every other
process off it (certificates, and the Secrets Manager secret that shares them).

May import: :mod:`batchnlp.spec`, :mod:`batchnlp.tasks`, :mod:`batchnlp.inference`,
:mod:`batchnlp.io`, :mod:`batchnlp.util`, :mod:`batchnlp.errors` (never the ledger or execution).
"""
