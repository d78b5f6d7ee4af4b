"""Deterministic, seeded synthetic data generators and loaders for the real data set formats."""
