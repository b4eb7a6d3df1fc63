"""Balancing-market / TSO simulator for the demo and tests: issues activations, clears bids."""
