"""The exactly-once record of a run: the job record, the lease that makes one process the
writer, the parts and their progress records, the one commit (file or lake table), ownership of
every file written (nothing else is ever deleted), the report and statistics built from it, and the
label cache (:mod:`.label_cache`) in which runs find the labels earlier runs computed.

May import: :mod:`batchnlp.spec`, :mod:`batchnlp.tasks`, :mod:`batchnlp.inference`,
:mod:`batchnlp.io`, :mod:`batchnlp.util`, :mod:`batchnlp.errors`.
"""
