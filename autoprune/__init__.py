"""autoprune: channel pruning as architecture search under an exact compute budget."""

__version__ = "0.1.0"
