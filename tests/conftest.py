"""Test-wide settings: hypothesis draws the same examples on every run (CI is reproducible)."""

from hypothesis import settings

settings.register_profile("jaxrm", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("jaxrm")
