"""Watching the inspection line: the prediction log and the drift monitor over it."""
