"""The inventory service of the order workflow."""
