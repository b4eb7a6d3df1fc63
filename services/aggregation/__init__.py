"""Aggregation: live state of every site and the portfolio's flexibility per market interval."""
