"""The notify service of the order workflow."""
