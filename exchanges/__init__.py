"""Exchanges: one spec per exchange (exchanges/<exchange>.py), registered in registry.py."""
