"""Python SDK for leasekeeper: a scheduler client and a worker that never loses a success."""
from .client import Client, Interrupted
from .journal import Journal
from .report import Outcome, Report
from .worker import TaskContext, Worker

__all__ = ["Client", "Interrupted", "Journal", "Outcome", "Report", "TaskContext", "Worker"]
