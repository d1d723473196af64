"""Identity: bearer tokens, the $connect authorizer, and the directory of users,
agents and topics it checks against."""

__all__ = ["accounts", "authorizer", "caller", "tokens"]
