"""Small programs the end-to-end tests run, dump and restore.

Each is a standalone script (run as ``python tests/workloads/NAME.py ...``):
they import nothing from lazarus and only the standard library.
"""
