"""Reading and writing data, and nothing about models or runs: storage locations on any fsspec
URL (:mod:`.storage`), the names of a run's control files (:mod:`.layout`), which paths a job may
touch (:mod:`.paths`), input file formats (:mod:`.formats`, a FORMATS registry), lake tables
(:mod:`.tables`, a TABLES registry) and the storage credentials workers may receive.

May import: :mod:`batchnlp.util`, :mod:`batchnlp.errors`.
"""
