"""Adapters that apply an admitted plan to a generation library and run it inside a lease.

Each adapter is an optional extra (``pip install -e '.[diffusers]'`` from a clone) and imports its library
lazily, so the core package imports without it.
"""
