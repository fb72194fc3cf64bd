"""The orchestrator service of the order workflow."""
