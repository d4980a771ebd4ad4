"""The tests (pytest); their helpers are in ``tests.support``, their fixtures in conftest.py."""
