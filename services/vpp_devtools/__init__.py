"""Development-only helpers: the embedded broker launcher, loopback ports, child processes that die
with their launcher. Used by ``make demo``/``up``/``bench``/``load*`` and the tests; never imported by a
service, and not shipped in the service image."""
