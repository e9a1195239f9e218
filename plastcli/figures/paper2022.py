"""Figures of P1 (2022)."""
