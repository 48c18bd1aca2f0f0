"""The ``siglip`` encoder family: joint text-image models (Keras Hub's SigLIP presets, or a preset
folder of the same backbone class), images and text embedded into one space."""
