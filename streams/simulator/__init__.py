"""Cascade simulator with ground truth, and replay of real MIND-layout data."""
