"""The fulfill service of the order workflow."""
