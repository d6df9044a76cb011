"""The hub's HTTP API: ``TranscendentalAPI``, ``/metrics``, ``/health``, ``/ready``."""
