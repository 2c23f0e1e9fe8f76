#!/usr/bin/env python3
"""One line per spec of a ginkgo JSON report (state, run time, name, and the
first line of a failure), then "P passed, F failed, S skipped". Specs that
--focus/--skip left out are not counted.

usage: summary.py REPORT_JSON
"""
import json
import sys

counts = {"passed": 0, "failed": 0, "skipped": 0}
lines = []
for suite in json.load(open(sys.argv[1])):
    for spec in suite.get("SpecReports") or []:
        if spec.get("LeafNodeType") != "It" or not spec.get("NumAttempts"):
            continue
        state = spec.get("State", "?")
        key = state if state in ("passed", "skipped") else "failed"
        counts[key] += 1
        name = " ".join(spec.get("ContainerHierarchyTexts") or []) + " " + spec.get("LeafNodeText", "")
        # Lower case: a line starting "SKIPPED " means a test that could
        # not run to scripts/test.sh, not a spec ginkgo skipped.
        line = f"{state:8} {spec.get('RunTime', 0) / 1e9:6.1f}s {name.strip()}"
        failure = (spec.get("Failure") or {}).get("Message") or ""
        if key == "failed" and failure.strip():
            line += "\n         -> " + failure.strip().splitlines()[0][:300]
        lines.append(line)
for line in sorted(lines):
    print(line)
print(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
