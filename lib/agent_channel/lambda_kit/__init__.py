"""The Lambda kit: parsing API Gateway's events, the route decorator, and the wiring
that builds clients and stores once per process."""

__all__ = ["events", "route", "wiring"]
