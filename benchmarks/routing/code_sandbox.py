"""Runs a model's Python function on test cases, never in the benchmark's own process: a separate
`python -I` (no site packages, no PYTHONPATH, no user directory) with a wall-clock timeout, limits
on memory and CPU time, an empty environment and a scratch directory. What the model wrote is
refused before it runs if it imports anything or touches a dunder attribute (the way out of a
restricted namespace), and it runs with a short list of builtins (no `__import__`, `open`, `eval`,
`exec`). Whatever goes wrong - a syntax error, an exception, a timeout, a crash - is a wrong
answer, not the benchmark's error."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

TIMEOUT_SECONDS = 5.0
MEMORY_LIMIT_BYTES = 1 << 30

# Run by the child: limits first, then the function defined and called in a namespace whose
# builtins are the list below; its prints go nowhere. The verdict is the last line of stdout.
HARNESS = r"""
import ast, io, json, math, resource, sys
limits = json.loads(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limits["memory"], limits["memory"]))
resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu"], limits["cpu"]))
request = json.loads(sys.stdin.read())
import builtins
allowed = {name: getattr(builtins, name) for name in request["builtins"]}
namespace = {"__builtins__": allowed}
def same(result, expected):
    if isinstance(expected, float) or isinstance(result, float):
        return isinstance(result, (int, float)) and math.isclose(result, expected, rel_tol=1e-6, abs_tol=1e-9)
    return result == expected
real_stdout = sys.stdout
sys.stdout = io.StringIO()
passed = 0
try:
    exec(compile(request["source"], "<model>", "exec"), namespace)
    function = namespace[request["function"]]
    for arguments, expected in request["cases"]:
        passed += same(function(*ast.literal_eval(arguments)), ast.literal_eval(expected))
except BaseException as error:
    verdict = {"passed": passed, "error": type(error).__name__}
else:
    verdict = {"passed": passed, "error": None}
sys.stdout = real_stdout
print(json.dumps(verdict))
"""

SAFE_BUILTINS = (
    "abs", "all", "any", "bool", "chr", "dict", "divmod", "enumerate", "filter", "float", "int", "isinstance",
    "len", "list", "map", "max", "min", "ord", "pow", "print", "range", "reversed", "round", "set", "sorted",
    "str", "sum", "tuple", "zip", "ArithmeticError", "Exception", "IndexError", "KeyError", "TypeError",
    "ValueError", "ZeroDivisionError",
)


@dataclass(frozen=True, slots=True)
class CodeCase:
    """Arguments and the expected result, each as a Python literal (`repr`)."""

    arguments: str
    expected: str


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    reason: str


def refusal(source: str) -> str | None:
    """Why `source` is not run at all, or None: it does not parse, imports, or uses a dunder name."""
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        return f"syntax error: {error.msg}"
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            return "imports are refused"
        name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""
        if name.startswith("__"):
            return f"dunder name {name} refused"
    return None


def run_function(source: str, function: str, cases: Sequence[CodeCase],
                 timeout: float = TIMEOUT_SECONDS) -> Verdict:
    """Whether `function`, defined by `source`, returns the expected result on every case."""
    refused = refusal(source)
    if refused is not None:
        return Verdict(False, refused)
    request = {"source": source, "function": function, "builtins": SAFE_BUILTINS,
               "cases": [[case.arguments, case.expected] for case in cases]}
    limits = {"memory": MEMORY_LIMIT_BYTES, "cpu": int(timeout) + 1}
    with tempfile.TemporaryDirectory(prefix="code-check-") as scratch:
        try:
            finished = subprocess.run([sys.executable, "-I", "-c", HARNESS, json.dumps(limits)],
                                      input=json.dumps(request), capture_output=True, text=True, timeout=timeout,
                                      cwd=scratch, env={})
        except subprocess.TimeoutExpired:
            return Verdict(False, f"timed out after {timeout:g} s")
    return _verdict(finished, len(cases))


def _verdict(finished: subprocess.CompletedProcess, num_cases: int) -> Verdict:
    lines = finished.stdout.strip().splitlines()
    if finished.returncode != 0 or not lines:
        return Verdict(False, f"the check exited with status {finished.returncode}")
    verdict = json.loads(lines[-1])
    if verdict["error"] is not None:
        return Verdict(False, f"raised {verdict['error']}")
    return Verdict(verdict["passed"] == num_cases, f"{verdict['passed']} of {num_cases} cases passed")
