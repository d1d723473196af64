"""The single DynamoDB table: its records, every key and shared condition, and transactions."""

__all__ = ["records", "schema", "transactions"]
