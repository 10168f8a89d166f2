"""The HTTPS service: the AdmissionReview shell (FastAPI), the server (uvicorn, TLS, shutdown),
the probes port and the certificates. Decisions come from ``core`` and ``control``."""
