"""Bidding: balancing-market capacity bids built from the portfolio's flexibility; awards back."""
