"""Model refs → a local directory of safe files → a loaded tokenizer and model, one module a step.

- :mod:`.refs`: what a ``--model`` value names (a directory, a URL, a Hub id; a content pin),
  parsed without touching storage.
- :mod:`.stage`: staging a ref into a local directory (local, S3 or any fsspec URL, the Hub) and
  the machine's cache, checksums and content digests, the driver's pre-flight ``check_ref`` and
  ``pinned`` (``batchnlp models digest``).
- :mod:`.load`: a staged directory → tokenizer and model (safetensors only, no remote code, a fast
  tokenizer), or tokenizer and config alone; the file and shape checks that name a bad checkpoint.
- :mod:`.store`: ``batchnlp models pull`` and ``models ls``, checkpoints kept in object storage.

Import from the module that does the step.
"""
