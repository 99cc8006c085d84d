"""Depth for MolmoThink: the 10x10 cell change detection shared by inference and the data tool (cells.py), the
depth VQ-VAE tokenizer with its training loop (vqvae.py), and the companion depth-code tool (codes.py)."""
