"""Sky surveys: what a survey is to the pipeline, and the one survey implemented (SDSS)."""
