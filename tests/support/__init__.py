"""What the tests share that is not a fixture (fixtures live in ``tests/conftest.py``): input
writers, the CLI runner and a one-worker cluster (:mod:`.helpers`), a text corpus (:mod:`.corpus`),
a Hive-partitioned input (:mod:`.lake`), the recording, fault-injecting proxy in front of moto
(:mod:`.s3proxy`), the markers of the fast subset (:mod:`.markers`), and :data:`REPO`."""

from pathlib import Path

# The repository's root, for the tests that read its files (the package, infra/, jobs/, README.md)
# from whichever folder of tests/ they sit in.
REPO = Path(__file__).resolve().parents[2]
