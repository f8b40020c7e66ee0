"""Continual learning over a task stream: strategies, replay memories, results."""
