"""Experiments over searched skip sets: the bench against transformers, the method comparison and
cross-task transfer."""
