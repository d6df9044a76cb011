"""Trio helpers shared by the hub and the client: supervision and wake-up signals."""
