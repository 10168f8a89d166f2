"""``flannel-guard check -o junit | -o sarif``: check's findings where CI systems read them.

Both are built from :class:`webhook.check.CheckReport` alone (pure, no I/O):

- JUnit XML: one test case per object checked (a flannel ConfigMap or a Node), named by
  kind and name, with its file and line; an error is a ``<failure>`` (its rule id the type,
  the summary the message, detail and fix the text), a warning goes to ``<system-out>``.
  ``--strict``'s gaps (nothing checked, no cluster-cidr) are one failing case more.
- SARIF 2.1.0 (OASIS; what GitHub code scanning and most CI dashboards take): one run, the
  rules seen (id = the finding's code), one result per finding at the object's file and line,
  ``error`` or ``warning``, the fix in the message and in the result's properties.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath, PureWindowsPath
from xml.etree import ElementTree as ET

from webhook import __version__
from webhook.check import CheckReport, Location
from webhook.check import render as render_text_or_json
from webhook.core.rules import Finding, Severity

__all__ = ["FORMATS", "render", "render_junit", "render_sarif"]

SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
INFORMATION_URI = "https://github.com/flannel-guard/flannel-guard"
STDIN_URI = "stdin"


def _message(finding: Finding) -> str:
    return "\n".join(part for part in (finding.summary, finding.detail,
                                       f"fix: {finding.fix}" if finding.fix else "") if part)


def render_junit(report: CheckReport) -> str:
    suite = ET.Element("testsuite", name="flannel-guard check")
    props = ET.SubElement(suite, "properties")  # first, as the JUnit schema orders them
    ET.SubElement(props, "property", name="cluster-cidr", value=report.cluster_cidr)
    cases = 0
    failures = 0
    for obj in report.objects:
        cases += 1
        case = ET.SubElement(suite, "testcase", classname=obj.location.file, name=f"{obj.kind} {obj.name}",
                             file=obj.location.file)
        if obj.location.line:
            case.set("line", str(obj.location.line))
        errors = [f for f in obj.findings if f.severity is Severity.ERROR]
        warnings = [f for f in obj.findings if f.severity is not Severity.ERROR]
        if errors:
            failures += 1
            failure = ET.SubElement(case, "failure", type=errors[0].code,
                                    message="; ".join(f.summary for f in errors))
            failure.text = "\n\n".join(f"{f.code} at {obj.location}\n{_message(f)}" for f in errors)
        if warnings:
            out = ET.SubElement(case, "system-out")
            out.text = "\n\n".join(f"warning {f.code} at {obj.location}\n{_message(f)}" for f in warnings)
    if report.strict and report.gaps:
        cases += 1
        failures += 1
        case = ET.SubElement(suite, "testcase", classname="flannel-guard", name="--strict")
        ET.SubElement(case, "failure", type="strict", message="; ".join(report.gaps))
    suite.set("tests", str(cases))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    root = ET.Element("testsuites", name="flannel-guard check", tests=str(cases), failures=str(failures),
                      errors="0")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")


def _uri(file: str) -> str:
    """A relative path stays relative (to the repository root, as code scanning expects)."""
    if file == "-":
        return STDIN_URI
    if PureWindowsPath(file).is_absolute() and not file.startswith("/"):
        return PureWindowsPath(file).as_uri()
    path = PurePosixPath(file)
    return path.as_uri() if path.is_absolute() else str(path)


def _location(location: Location) -> dict[str, object]:
    physical: dict[str, object] = {"artifactLocation": {"uri": _uri(location.file)}}
    if location.line:
        physical["region"] = {"startLine": location.line}
    return {"physicalLocation": physical}


def render_sarif(report: CheckReport) -> str:
    rules: dict[str, dict[str, object]] = {}
    results: list[dict[str, object]] = []
    for obj in report.objects:
        for finding in obj.findings:
            if finding.code not in rules:
                rules[finding.code] = {
                    "id": finding.code,
                    "shortDescription": {"text": finding.summary},
                    "defaultConfiguration": {"level": finding.severity.value},
                }
            result: dict[str, object] = {
                "ruleId": finding.code,
                "ruleIndex": list(rules).index(finding.code),
                "level": "error" if finding.severity is Severity.ERROR else "warning",
                "message": {"text": _message(finding)},
                "locations": [_location(obj.location)],
                "properties": {"kind": obj.kind, "name": obj.name, "detail": finding.detail,
                               "fix": finding.fix},
            }
            results.append(result)
    if report.strict and report.gaps:
        rules["strict"] = {"id": "strict", "shortDescription": {"text": "--strict: the check proved nothing"},
                           "defaultConfiguration": {"level": "error"}}
        results.extend({"ruleId": "strict", "ruleIndex": list(rules).index("strict"), "level": "error",
                        "message": {"text": gap}} for gap in report.gaps)
    run = {
        "tool": {"driver": {"name": "flannel-guard", "version": __version__, "semanticVersion": __version__,
                            "informationUri": INFORMATION_URI, "rules": list(rules.values())}},
        "results": results,
        "properties": {"clusterCidr": report.cluster_cidr},
    }
    return json.dumps({"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}, indent=2)


#: ``check --output`` values beyond check's own text and json.
FORMATS = {"junit": render_junit, "sarif": render_sarif}


def render(report: CheckReport, output: str) -> str:
    """Any ``check --output``: junit and sarif here, text and json by :func:`webhook.check.render`."""
    return FORMATS[output](report) if output in FORMATS else render_text_or_json(report, output)
