"""Experiments that sit above the library (never imported by it): the zoo of foreign GANs."""
