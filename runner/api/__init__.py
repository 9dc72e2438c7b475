"""The client of Civitai's orchestration API (`Client`): submit, get, query, cancel, blobs,
downloads; every HTTP failure translated once into errors.py; typed results.
"""

from runner.api._client import Client
from runner.api._models import Workflow, WorkflowPage, WorkflowStatus

__all__ = [
    "Client",
    "Workflow",
    "WorkflowPage",
    "WorkflowStatus",
]
