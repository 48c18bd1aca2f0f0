"""Images -> vectors: feature settings, weights, backbones, the embedder and whitening."""
