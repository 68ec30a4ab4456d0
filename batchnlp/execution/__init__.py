"""Running a job: the plan (units of work, incremental skipping), the estimate, the runner that
submits units to the cluster's workers and collects their parts, the worker side of a unit,
graceful shutdown and Spot notices, and sharded runs (:mod:`.shards`).

May import: :mod:`batchnlp.cluster`, :mod:`batchnlp.ledger` and everything below them.
"""
