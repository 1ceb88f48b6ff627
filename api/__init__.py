"""The EHR-facing HTTP service of the screener (FastAPI), thin over `screener.screen`.

Position: the outermost layer. Nothing in `screener/` imports it. Start it with
`python -m api --host 127.0.0.1 --port 8000 --workers 2`; see docs/api.md.
"""
