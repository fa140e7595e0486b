"""The Sloan Digital Sky Survey: conventions, extinction, frames, catalogue queries and the
simulated survey."""
