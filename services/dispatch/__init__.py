"""Dispatch: turns activations into per-site setpoints, watches delivery, re-allocates shortfalls."""
