"""Rank: importance of each ablated variant, with its uncertainty over seeds."""
