"""The payment service of the order workflow."""
