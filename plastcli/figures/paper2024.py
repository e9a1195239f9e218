"""Figures of P2 (2024)."""
