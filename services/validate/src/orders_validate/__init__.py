"""The validate service of the order workflow."""
