"""Shared test helpers: tiny models, data fixtures, NumPy references, stand-ins and servers.

Importable from every test as ``helpers.<module>`` (tests/conftest.py); subprocess workers get
tests/ on their PYTHONPATH from the test that starts them.
"""
