"""Grace cancellation: scheduling it when an agent or session leaves, and cancelling
the work it left delegated once the grace runs out."""

__all__ = ["cancellation", "dynamodb", "eventbridge", "scheduler", "task_book"]
