"""Presence at scale, by model: the real presence rules over an in-memory store
that bills each request as DynamoDB would, driven by a simulated fleet of plugins
(heartbeats, churn, crashes, a reconnect storm), reporting per-minute requests,
request units, Lambda work, Scheduler calls and what each costs (docs/SCALE.md)."""
