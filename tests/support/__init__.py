"""Helpers shared by more than one test module (and by nothing outside tests/).

Each helper lives here once; test modules import it from `tests.support.*`
instead of from each other.
"""
