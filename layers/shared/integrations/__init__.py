"""Clients of services outside AWS (identity providers)."""
