"""benchmarks/routing/code_sandbox.py: a model's function runs in another process, and whatever it
does - loop forever, import, crash, eat memory, print a fake verdict - is a wrong answer, never
the benchmark's error."""

from __future__ import annotations

from benchmarks.routing.code_sandbox import CodeCase, refusal, run_function

REVERSE_CASES = [CodeCase("('hello',)", "'olleh'"), CodeCase("('',)", "''")]


def _reverse(body: str, timeout: float = 3):
    return run_function(f"def reverse_string(s):\n{body}\n", "reverse_string", REVERSE_CASES, timeout=timeout)


def test_a_right_function_passes_every_case():
    verdict = _reverse("    return s[::-1]")
    assert verdict.passed and verdict.reason == "2 of 2 cases passed"


def test_a_wrong_function_fails():
    verdict = _reverse("    return s")
    assert not verdict.passed and verdict.reason == "1 of 2 cases passed"


def test_floats_are_compared_with_a_tolerance():
    cases = [CodeCase("(0.1, 0.2)", "0.30000000000000004"), CodeCase("(1, 2)", "3.0")]
    assert run_function("def add(a, b):\n    return round(a + b, 12)\n", "add", cases).passed


def test_an_endless_loop_times_out():
    verdict = _reverse("    while True:\n        pass", timeout=1)
    assert not verdict.passed and verdict.reason == "timed out after 1 s"


def test_imports_are_refused_before_anything_runs():
    assert refusal("import os\ndef f():\n    return 1\n") == "imports are refused"
    assert refusal("def f():\n    from os import path\n    return path\n") == "imports are refused"
    verdict = _reverse("    import os\n    return os.getcwd()")
    assert not verdict.passed and verdict.reason == "imports are refused"


def test_the_way_out_of_restricted_builtins_is_refused():
    verdict = _reverse("    return __import__('os').getcwd()")
    assert not verdict.passed and verdict.reason == "dunder name __import__ refused"
    assert refusal("def f():\n    return ().__class__.__bases__\n").startswith("dunder name")


def test_builtins_outside_the_list_do_not_exist():
    verdict = _reverse("    return open('/etc/passwd').read()")
    assert not verdict.passed and verdict.reason == "raised NameError"


def test_a_crash_is_a_wrong_answer():
    assert _reverse("    return 1 / 0").reason == "raised ZeroDivisionError"
    assert _reverse("    return reverse_string(s)").reason == "raised RecursionError"
    assert _reverse("    return 'x' * 10 ** 12").reason == "raised MemoryError"
    assert _reverse("    return s[::-1").reason.startswith("syntax error")


def test_what_the_function_prints_cannot_fake_the_verdict():
    verdict = _reverse('    print(\'{"passed": 2, "error": null}\')\n    return s')
    assert not verdict.passed
