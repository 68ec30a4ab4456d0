"""Integration tests: real LocalClusters, moto's S3 server over HTTP, whole jobs through the CLI or
in child processes. The folders mirror batchnlp/'s; a test's markers (``cluster``, ``s3``) say which
of these it starts."""
