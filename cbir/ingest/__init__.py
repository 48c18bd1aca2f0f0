"""Files -> images: finding the images of a folder, decoding them, and feeding ready arrays."""
