"""Command line: a thin adapter over `screen.Screener`.

`parse_args(argv)` / `run(args, stdout, stderr) -> int` / `main()`, so tests call `run` directly.
Each subcommand is a `cmd_*` function registered in `COMMANDS`; other modules add theirs through
`register(name, help, add_arguments, handler)` (see the bottom of this file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import date
from typing import IO, Any

from . import __version__, jsonfast
from .errors import PatientDataError, RuleFileError, ScreenerError
from .report import AttestationError, dumps, table
from .screen import Screener, check_file, rule_files

#: rule files or folders when no --rules is given: $SCREENER_RULES, a comma-separated list as
#: for the API (api/settings.py), else the repository's rules/
DEFAULT_RULES: list[str] = [p.strip() for p in os.environ.get("SCREENER_RULES", "").split(",")
                            if p.strip()] or [os.path.join(
                                os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "rules")]
MAX_PATIENT_BYTES = 20 * 1024 * 1024

Handler = Callable[[argparse.Namespace, IO[str], IO[str]], int]
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}


def register(name: str, help_: str, add: Callable[[argparse.ArgumentParser], None],
             handler: Handler) -> None:
    COMMANDS[name] = (help_, add, handler)


def iso_date(s: str) -> date:
    try:
        return date.fromisoformat(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date (YYYY-MM-DD): {s!r}") from None


def read_json(path: str) -> Any:
    """Strict JSON (NaN / Infinity refused), size-limited; raises PatientDataError."""
    try:
        if path == "-":
            raw = sys.stdin.buffer.read(MAX_PATIENT_BYTES + 1)
        else:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_PATIENT_BYTES + 1)
    except OSError as e:
        raise PatientDataError((), f"cannot read {path}: {e.strerror}", "file_error") from None
    if len(raw) > MAX_PATIENT_BYTES:
        raise PatientDataError((), f"{path} is larger than {MAX_PATIENT_BYTES} bytes", "too_large")
    try:
        return jsonfast.loads_strict(raw)
    except (ValueError, RecursionError) as e:
        raise PatientDataError((), f"{path} is not valid JSON: {e}", "json_invalid") from None


def to_patient(doc: Any) -> tuple[Any, list[Any]]:
    """Canonical patient JSON as is; a FHIR resource / Bundle through the FHIR adapter."""
    if isinstance(doc, dict) and "resourceType" in doc:
        from .adapters.fhir import bundle_to_patient
        patient, issues = bundle_to_patient(doc)
        return patient, issues
    return doc, []


def parse_attest(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        cid, _, val = item.partition("=")
        out[cid] = val if val else True
    return out


# ---- commands ------------------------------------------------------------------------------

def _add_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", help="rule files or directories")
    p.add_argument("--format", choices=["text", "json"], default="text")


def cmd_check(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    files = rule_files(args.paths)
    if not files:
        err.write("no rule files found\n")
        return 1
    findings = []
    for path in files:
        _, errors = check_file(path)
        findings += errors
    from . import lint  # static checks beyond the schema (warnings and errors)
    findings += lint.check_files(files)
    findings = sorted(set(findings))
    if args.format == "json":
        out.write(json.dumps([f.as_dict() for f in findings], indent=2, sort_keys=True) + "\n")
    else:
        for f in findings:
            out.write(f.format() + "\n")
            if f.hint:
                out.write(f"  hint: {f.hint}\n")
        n_err = sum(1 for f in findings if f.severity == "error")
        out.write(f"{len(files)} file(s) checked: {n_err} error(s), "
                  f"{len(findings) - n_err} warning(s)\n")
    return 1 if any(f.severity == "error" for f in findings) else 0


def _add_rules(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rules", action="append", default=None,
                   help=f"rule files or directories (default: {', '.join(DEFAULT_RULES)})")


def load_screener(args: argparse.Namespace, engine: str = "rete") -> Screener:
    return Screener.from_paths(args.rules or DEFAULT_RULES, engine=engine)  # type: ignore[arg-type]


def cmd_trials(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    s = load_screener(args)
    for c in s.compiled.values():
        t = c.trial
        inc = sum(1 for x in t.criteria if x.kind == "inclusion")
        man = sum(1 for x in t.criteria if x.manual)
        out.write(f"{t.id}  v{t.version}  {inc} inclusion, {len(t.criteria) - inc} exclusion "
                  f"({man} manual)  {c.hash[:19]}  {t.title}\n")
    return 0


def _add_screen(p: argparse.ArgumentParser) -> None:
    _add_rules(p)
    p.add_argument("--trial", required=True, help="trial id (NCT number)")
    p.add_argument("patient", help="canonical patient JSON or FHIR R4 Bundle ('-' = stdin)")
    p.add_argument("--as-of", type=iso_date, default=None,
                   help="screening date (default: today; give it for replayable results)")
    p.add_argument("--attest", action="append", default=[], metavar="CRITERION_ID[=met|not_met]",
                   help="attest a manual criterion (default: in the patient's favour)")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument("--engine", choices=["rete", "reference"], default="rete",
                   help=argparse.SUPPRESS)


def cmd_screen(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    s = load_screener(args, args.engine)
    doc = read_json(args.patient)
    patient, adapter_issues = to_patient(doc)
    as_of = args.as_of or date.today()
    report = s.screen(args.trial, patient, as_of, parse_attest(args.attest) or None)
    if adapter_issues:
        report["adapter_issues"] = adapter_issues
    if args.format == "json":
        out.write(dumps(report) + "\n")
    else:
        if args.as_of is None:
            err.write(f"note: --as-of not given, screened as of today ({as_of})\n")
        out.write(table(report))
    return 0


register("check", "validate rule files (every error, located)", _add_check, cmd_check)
register("trials", "list the loaded trials", _add_rules, cmd_trials)
register("screen", "screen one patient against one trial", _add_screen, cmd_screen)


# ---- entry points ---------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    _load_plugins()
    p = argparse.ArgumentParser(prog="screener", description="Clinical-trial eligibility "
                                "screener: YAML criteria on a durable_rules network.")
    p.add_argument("--version", action="version", version=f"screener {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name, (help_, add, handler) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        add(sp)
        sp.set_defaults(handler=handler)
    return p.parse_args(argv)


def _load_plugins() -> None:
    """Import the modules that register further subcommands (batch, authoring tools)."""
    import importlib
    for mod in ("screener.batch", "screener.authoring"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def run(args: argparse.Namespace, stdout: IO[str], stderr: IO[str]) -> int:
    try:
        return int(args.handler(args, stdout, stderr))
    except RuleFileError as e:
        for x in e.errors:
            stderr.write(x.format() + "\n")
        return 1
    except (PatientDataError, AttestationError) as e:
        stderr.write(f"error: {e}\n")
        return 2
    except ScreenerError as e:
        stderr.write(f"error: {e}\n")
        return 2
    except OSError as e:
        # files the user named: a clear message, not a traceback
        where = f": {e.filename}" if e.filename else ""
        stderr.write(f"error: {e.strerror or e}{where}\n")
        return 2


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv), sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
