"""Sharded runs: the shared plan every shard reads (:mod:`.plan`) and one shard's run and the
one commit of them all (:mod:`.run`)."""
