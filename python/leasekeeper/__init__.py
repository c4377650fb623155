"""Python SDK for leasekeeper: a scheduler client and a worker that never loses a success."""
from .client import Client
from .journal import Journal, Outcome, Report
from .worker import TaskContext, Worker

__all__ = ["Client", "Journal", "Outcome", "Report", "TaskContext", "Worker"]
