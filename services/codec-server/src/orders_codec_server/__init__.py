"""Codec server: Temporal UI/CLI decode and encode with the caller's own Vault identity."""
