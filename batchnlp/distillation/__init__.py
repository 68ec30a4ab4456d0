"""``batchnlp distill``: a smaller student trained on a run's own labels, the data it reads,
its training loop and its report.

May import: :mod:`batchnlp.observe`, :mod:`batchnlp.execution` and everything below them (never
:mod:`batchnlp.deploy`).
"""
