"""zbatch: YAML manifests to Z-Image generations on Civitai's orchestration API.

Resumable, exactly-once and cost-capped. See README.md and docs/.
"""

__version__ = "0.1.0"
