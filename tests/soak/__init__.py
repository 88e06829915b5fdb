"""Reliability soak suite for tinker_sync: ``python -m tests.soak --help``.

Modes ``faults`` (faulting proxy), ``restart`` (SIGKILL the local server mid-pipeline) and ``fuzz``
(malformed requests to every endpoint). Not part of the default test run; tests/test_soak_quick.py runs
each mode with tiny sizes.
"""
