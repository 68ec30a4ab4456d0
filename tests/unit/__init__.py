"""Unit tests: no Dask cluster, no S3 server, no job run. The folders mirror batchnlp/'s."""
