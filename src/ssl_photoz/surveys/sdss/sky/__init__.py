"""The simulated SDSS survey (``source: mock``): catalogue, dust, frames and their validation.

Reached only through the mock query backend and the mock frame source; nothing downstream of the
catalogue and the frames imports it.
"""
