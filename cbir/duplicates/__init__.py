"""Near-duplicate images, found from the stored vectors: pairs, groups, and acting on them."""
