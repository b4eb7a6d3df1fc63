"""Shared plumbing for every VPP service: settings, Kafka, gRPC bootstrap, metrics, logging.

A service's own package holds only its domain logic and its gRPC servicer; everything generic lives here.
"""
