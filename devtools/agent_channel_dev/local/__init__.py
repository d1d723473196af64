"""The local stack: what stands in for API Gateway and Scheduler off AWS."""
