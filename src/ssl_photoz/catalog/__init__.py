"""The catalogue stage: from the two queries to the kept objects, their rejects and the splits."""
