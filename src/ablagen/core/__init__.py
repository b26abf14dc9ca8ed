"""Shared ground: the exception hierarchy, atomic file writes, the study directory's layout."""
