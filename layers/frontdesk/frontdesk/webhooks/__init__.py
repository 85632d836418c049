"""Outbound webhooks: a clinic's endpoints (endpoints.py) and the signed deliveries of its
events to them (delivery.py)."""
