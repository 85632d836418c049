"""Frontdesk: the shared code of every function, deployed as a Lambda layer."""
