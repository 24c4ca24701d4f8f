"""Retrieval over image pairs: the index of pair embeddings a user keeps (``changescope.retrieval.index``)."""
