"""Catalogue photo-z baselines: redshifts from the dereddened colours alone."""
