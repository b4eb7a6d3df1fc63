"""Launchers for people: ``make demo``, ``make up``, ``make bench``, ``make load``. They start real
processes (Tansu, every service, device simulators, edge agents) on loopback ports chosen at run time."""
