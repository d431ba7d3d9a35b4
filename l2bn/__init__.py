"""l2bn: L2 regularization versus batch and weight normalization (van Laarhoven 2017)."""

__version__ = "0.1.0"
