"""Clinical-trial eligibility screener.

Pipeline (one module per stage): load -> validate -> parse -> compile -> normalize -> engine ->
report; `screen.Screener` ties them together, `cli` and `api/` are thin adapters.
"""

__version__ = "0.1.0"
