"""No test's result depends on the machine's speed: no real sleeps, no assertions on elapsed real time.

Why: a wall-clock test that sleeps and then compares real seconds passes on an idle machine and fails on a loaded
CI runner (``train.max_minutes`` tests failed that way: ``assert 2 == 102``). Wall-clock behaviour is tested on a
controlled clock instead (the ``fake_clock`` fixture in ``conftest.py``, which drives :mod:`sidrec.clock`); real
time is measured by the benchmarks (``benchmarks/cap_probe.py``). This scan of ``tests/*.py`` keeps it that way:

* a call of ``time.sleep`` (under any alias, or imported by name);
* an ``assert`` that reads the real clock (``time.time``, ``perf_counter``, ``monotonic``, ``process_time`` and
  their ``_ns`` forms), directly or through a local name assigned from it (``wall = time.time() - t0``);
  ``sidrec.clock.now()`` counts as the real clock in a test that does not use ``fake_clock``;
* a hypothesis ``@given`` test without ``@settings(deadline=None)`` (hypothesis fails an example that takes
  longer than 200 ms by default, so a loaded machine fails it).

Tests marked ``slow`` are exempt (they run on demand, not in the default suite); anything else needs an entry in
:data:`ALLOWED` saying why its real time is legitimate.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
CLOCK_FUNCTIONS = {"time", "time_ns", "perf_counter", "perf_counter_ns", "monotonic", "monotonic_ns", "process_time",
                   "process_time_ns"}

# (file, function, reason): the only places where a test may wait or read real time
ALLOWED: list[tuple[str, str, str]] = [
    ("test_bad_inputs.py", "test_ctrl_c_prints_interrupted_and_exits_130",
     "polls (0.2 s) until a real child process has written its run folder before sending it SIGINT: it waits for "
     "another process, no duration is asserted, and 90 s is only a safety limit on the wait"),
]


@dataclass(frozen=True)
class Finding:
    file: str
    function: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"tests/{self.file}:{self.line} in {self.function}: {self.what}"


def _is_slow(marks: list[ast.expr]) -> bool:
    """Whether one of ``marks`` (decorators, or a module's ``pytestmark``) is ``pytest.mark.slow``."""
    for m in marks:
        for node in ast.walk(m):
            if isinstance(node, ast.Attribute) and node.attr == "slow":
                return True
    return False


class _Aliases(ast.NodeVisitor):
    """The names a file gives the ``time`` module, its clock functions and ``sleep`` (``import time as _time``,
    ``from time import perf_counter as pc``), and ``sidrec.clock`` and its ``now``, wherever they are imported."""

    def __init__(self) -> None:
        self.time_modules: set[str] = set()
        self.clock_calls: set[str] = set()
        self.sleeps: set[str] = set()
        self.sidrec_clocks: set[str] = set()
        self.sidrec_nows: set[str] = set()

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.name == "time":
                self.time_modules.add(a.asname or "time")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for a in node.names:
            name = a.asname or a.name
            if node.module == "time" and a.name in CLOCK_FUNCTIONS:
                self.clock_calls.add(name)
            elif node.module == "time" and a.name == "sleep":
                self.sleeps.add(name)
            elif node.module == "sidrec" and a.name == "clock":
                self.sidrec_clocks.add(name)
            elif node.module == "sidrec.clock" and a.name == "now":
                self.sidrec_nows.add(name)


class _Scan:
    """Findings of one test file."""

    def __init__(self, file: str, tree: ast.Module) -> None:
        self.file = file
        self.tree = tree
        self.aliases = _Aliases()
        self.aliases.visit(tree)
        self.findings: list[Finding] = []

    def _real_clock_call(self, call: ast.Call, faked: bool) -> bool:
        f, a = call.func, self.aliases
        if isinstance(f, ast.Name):
            return f.id in a.clock_calls or (f.id in a.sidrec_nows and not faked)
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
            if f.value.id in a.time_modules and f.attr in CLOCK_FUNCTIONS:
                return True
            return f.value.id in a.sidrec_clocks and f.attr == "now" and not faked
        return False

    def _sleep_call(self, call: ast.Call) -> bool:
        f, a = call.func, self.aliases
        if isinstance(f, ast.Name):
            return f.id in a.sleeps
        return (isinstance(f, ast.Attribute) and f.attr == "sleep" and isinstance(f.value, ast.Name)
                and f.value.id in a.time_modules)

    def _reads_clock(self, node: ast.AST, tainted: set[str], faked: bool) -> bool:
        for n in ast.walk(node):
            if isinstance(n, ast.Call) and self._real_clock_call(n, faked):
                return True
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in tainted:
                return True
        return False

    def function(self, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        faked = "fake_clock" in {a.arg for a in fn.args.args + fn.args.kwonlyargs}
        # local names holding real time, to a fixed point (t0 = time.time(); wall = time.time() - t0; ok = wall < 3)
        tainted: set[str] = set()
        while True:
            before = len(tainted)
            for n in ast.walk(fn):
                value = getattr(n, "value", None)
                if isinstance(n, ast.Assign | ast.AugAssign | ast.AnnAssign) and value is not None \
                        and self._reads_clock(value, tainted, faked):
                    targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                    tainted |= {t.id for tt in targets for t in ast.walk(tt) if isinstance(t, ast.Name)}
            if len(tainted) == before:
                break
        for n in ast.walk(fn):
            if isinstance(n, ast.Call) and self._sleep_call(n):
                self.findings.append(Finding(self.file, fn.name, n.lineno, "a real sleep (time.sleep)"))
            if isinstance(n, ast.Assert) and self._reads_clock(n.test, tainted, faked):
                self.findings.append(Finding(self.file, fn.name, n.lineno, "an assert on elapsed real time"))
        given = any(isinstance(d, ast.Call) and getattr(d.func, "id", getattr(d.func, "attr", "")) == "given"
                    for d in fn.decorator_list)
        if given and not any(isinstance(d, ast.Call) and getattr(d.func, "id", getattr(d.func, "attr", "")) == "settings"
                             and any(k.arg == "deadline" and isinstance(k.value, ast.Constant) and k.value.value is None
                                     for k in d.keywords) for d in fn.decorator_list):
            self.findings.append(Finding(self.file, fn.name, fn.lineno,
                                         "a hypothesis test without @settings(deadline=None)"))

    def run(self) -> list[Finding]:
        module_marks = [s.value for s in self.tree.body if isinstance(s, ast.Assign)
                        and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in s.targets)]
        if _is_slow(module_marks):
            return []
        functions: list[ast.FunctionDef | ast.AsyncFunctionDef] = []
        for node in self.tree.body:  # module-level functions and helpers, and the methods of test classes
            if isinstance(node, ast.ClassDef):
                if _is_slow(node.decorator_list):
                    continue
                functions += [n for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                functions.append(node)
        for fn in functions:
            if not _is_slow(fn.decorator_list):
                self.function(fn)
        return self.findings


def scan(file: str, source: str) -> list[Finding]:
    """The wall-clock findings of one test file's ``source`` (see the module docstring)."""
    return _Scan(file, ast.parse(source)).run()


def suite_findings() -> list[Finding]:
    return [f for path in sorted(TESTS.glob("*.py")) for f in scan(path.name, path.read_text())]


def test_no_test_sleeps_or_asserts_on_real_time():
    allowed = {(file, fn) for file, fn, _ in ALLOWED}
    bad = [f for f in suite_findings() if (f.file, f.function) not in allowed]
    assert not bad, ("tests that depend on the machine's speed; use the fake_clock fixture (tests/conftest.py), "
                     "or add an entry with its reason to ALLOWED:\n" + "\n".join(map(str, bad)))


def test_every_allowed_entry_is_still_needed():
    found = {(f.file, f.function) for f in suite_findings()}
    stale = [(file, fn) for file, fn, _ in ALLOWED if (file, fn) not in found]
    assert not stale, f"ALLOWED entries that match nothing any more (remove them): {stale}"


OFFENDER = '''
import time as _time
from time import perf_counter as pc, sleep as nap
import pytest
from hypothesis import given, settings
from sidrec import clock


def test_the_old_cap_test(monkeypatch):
    def slow_loss(self, model, batch):
        _time.sleep(0.02)
    t0 = _time.time()
    train()
    wall = _time.time() - t0
    assert wall <= 30 + 1.0


def test_direct():
    t = pc()
    nap(0.1)
    assert pc() - t < 5


def test_real_sidrec_clock():
    t0 = clock.now()
    train()
    assert clock.now() - t0 < 5


def test_fake_sidrec_clock(fake_clock):
    t0 = clock.now()
    train()
    assert clock.now() - t0 < 5


def test_polls_without_asserting_time():
    deadline = _time.time() + 90
    while _time.time() < deadline:
        pass
    assert True


@given(1)
def test_hypothesis_default_deadline(x):
    pass


@settings(deadline=None)
@given(1)
def test_hypothesis_no_deadline(x):
    pass


@pytest.mark.slow
def test_slow_may_sleep():
    _time.sleep(1)
'''


def test_the_scan_finds_each_kind_of_real_time_dependence():
    """The scan catches the form the max_minutes tests had before the controlled clock, and no more."""
    got = sorted((f.function, f.what) for f in scan("offender.py", OFFENDER))
    assert got == sorted([
        ("test_the_old_cap_test", "a real sleep (time.sleep)"),
        ("test_the_old_cap_test", "an assert on elapsed real time"),
        ("test_direct", "a real sleep (time.sleep)"),
        ("test_direct", "an assert on elapsed real time"),
        ("test_real_sidrec_clock", "an assert on elapsed real time"),
        ("test_hypothesis_default_deadline", "a hypothesis test without @settings(deadline=None)"),
    ]), got


@pytest.mark.parametrize("file, fn, reason", ALLOWED)
def test_allowed_entries_give_a_reason(file, fn, reason):
    assert (TESTS / file).exists() and fn.startswith("test_") and len(reason) > 40
