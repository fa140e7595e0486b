"""Shared plumbing of every stage: the config and its defaults, atomic writes, provenance, code
digests, progress, the model kinds."""
