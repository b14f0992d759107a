"""`star-runtime serve`: an OpenAI-compatible server over one long-lived engine (app.py: HTTP; scheduler.py:
continuous batching; protocol.py: request and response shapes; metrics.py: Prometheus)."""
