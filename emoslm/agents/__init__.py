"""Agents: everything that answers a user's spoken turn (the teacher cascade, later the unified model)."""
