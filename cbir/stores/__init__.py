"""Where an index lives: the store interfaces and one package per backend (``folder``, ``milvus``)."""
