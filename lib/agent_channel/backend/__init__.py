"""The backend's command router: one JSON command in, one JSON answer out, with the
delivery ops (dispatch, decisions, replies, broadcasts) and the operator's ops
(accounts, tokens, topics, tasks, presence)."""

__all__ = ["admin_ops", "commands", "delivery_ops", "router"]
