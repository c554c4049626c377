"""The tenants file: keys authenticate as their tenant with its policy, and every mistake in the
file is refused with its line, its field and what is allowed."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from router.gateway.tenants import Budget, Tenant, TenantPolicy, Tenants, TenantsError
from tests.servers import REPO_ROOT, run_python

ACME_KEY = "sk-acme-secret"
OPS_KEY = "sk-ops-secret"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


GOOD_FILE = f"""\
tenants:
  - name: acme
    keys_sha256: [{digest(ACME_KEY)}, {digest("sk-acme-second")}]
    requests_per_minute: 600
    tokens_per_minute: 100000
    max_concurrent: 8
    budget: {{tokens: 5000000, period: month}}
    models: [auto, llm-small]
  - name: ops
    admin: true
    keys_sha256: [{digest(OPS_KEY).upper()}]
"""


def load(tmp_path, text: str) -> Tenants:
    path = tmp_path / "tenants.yaml"
    path.write_text(text)
    return Tenants.from_file(path)


def refusal(tmp_path, text: str) -> str:
    with pytest.raises(TenantsError) as error:
        load(tmp_path, text)
    return str(error.value)


def test_a_key_authenticates_as_its_tenant_with_its_policy(tmp_path):
    tenants = load(tmp_path, GOOD_FILE)

    acme = tenants.authenticate(f"Bearer {ACME_KEY}")
    assert acme == Tenant("acme", TenantPolicy(600, 100000, 8, Budget(5000000, "month"),
                                               frozenset({"auto", "llm-small"})))
    assert acme.policy.limited and acme.policy.allows_model("llm-small") and not acme.policy.allows_model("llm-large")
    assert tenants.authenticate("bearer   sk-acme-second ") == acme
    ops = tenants.authenticate(f"BEARER {OPS_KEY}")
    assert ops.admin and not ops.policy.limited and ops.policy.allows_model("anything")
    assert tenants.required and len(tenants) == 2 and tenants.names == ["acme", "ops"]


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer sk-wrong", f"Basic {ACME_KEY}", ACME_KEY])
def test_a_missing_or_wrong_key_authenticates_as_no_one(tmp_path, header):
    assert load(tmp_path, GOOD_FILE).authenticate(header) is None


def test_api_keys_become_tenants_without_limits():
    tenants = Tenants.from_api_keys(["first", "second"])

    assert tenants.authenticate("Bearer second") == Tenant("key-2", TenantPolicy())
    assert tenants.authenticate("Bearer third") is None
    assert tenants.names == ["key-1", "key-2"] and tenants.required


def test_no_tenants_require_no_key():
    tenants = Tenants.none()

    assert not tenants.required and len(tenants) == 0 and tenants.authenticate("Bearer anything") is None


@pytest.mark.parametrize(("field_line", "expected"), [
    ("    colour: red", "line 4: tenants[0].colour: unknown field; allowed: name, keys_sha256,"),
    ("    tokens_per_minute: 0", "line 4: tenants[0].tokens_per_minute: Input should be greater than 0"),
    ("    max_concurrent: -2", "line 4: tenants[0].max_concurrent: Input should be greater than 0"),
    ("    requests_per_minute: '600'", "line 4: tenants[0].requests_per_minute: Input should be a valid integer"),
    ("    budget: {tokens: 10, period: fortnight}",
     "line 4: tenants[0].budget.period: Input should be 'hour', 'day', 'week' or 'month'"),
    ("    budget: {tokens: 10, period: day, rollover: true}",
     "line 4: tenants[0].budget.rollover: unknown field; allowed: tokens, period"),
    ("    admin: yes please", "line 4: tenants[0].admin: Input should be a valid boolean"),
])
def test_an_invalid_field_is_named_with_its_line(tmp_path, field_line, expected):
    text = f"tenants:\n  - name: acme\n    keys_sha256: [{digest(ACME_KEY)}]\n{field_line}\n"

    message = refusal(tmp_path, text)

    assert "tenants.yaml" in message and expected in message


def test_a_malformed_digest_is_named_with_its_line(tmp_path):
    text = f"tenants:\n  - name: acme\n    keys_sha256:\n      - {digest(ACME_KEY)}\n      - {ACME_KEY}\n"

    message = refusal(tmp_path, text)

    assert f"line 5: tenants[0].keys_sha256[1]: '{ACME_KEY}' is not a sha256 hex digest (64 characters 0-9 a-f" \
        in message


def test_a_repeated_name_or_shared_key_is_refused(tmp_path):
    text = (f"tenants:\n  - name: acme\n    keys_sha256: [{digest(ACME_KEY)}]\n"
            f"  - name: acme\n    keys_sha256: [{digest(OPS_KEY)}]\n"
            f"  - name: ops\n    keys_sha256:\n      - {digest(OPS_KEY)}\n")

    message = refusal(tmp_path, text)

    assert "line 4: tenants[1].name: the name 'acme' is already the name of tenants[0]; names must be unique" in message
    assert ("line 8: tenants[2].keys_sha256[0]: this key digest is already a key of tenant 'acme'; "
            "each key belongs to one tenant") in message


def test_a_field_written_twice_is_refused(tmp_path):
    text = f"tenants:\n  - name: acme\n    keys_sha256: [{digest(ACME_KEY)}]\n    max_concurrent: 8\n" \
           "    max_concurrent: 80\n"

    message = refusal(tmp_path, text)

    assert "line 5: max_concurrent: written twice in one entry; each field may appear once" in message


@pytest.mark.parametrize(("text", "expected"), [
    ("", "is empty: it needs a `tenants:` list"),
    ("tenants: [\n", "is not valid YAML"),
    ("tenants: []\n", "line 1: tenants: List should have at least 1 item"),
    ("tenant:\n  - name: acme\n", "line 1: tenant: unknown field; allowed: tenants"),
    ("tenants:\n  - name: acme\n", "line 2: tenants[0].keys_sha256: Field required"),
])
def test_a_file_without_tenants_is_refused(tmp_path, text, expected):
    assert expected in refusal(tmp_path, text)


def test_an_unreadable_file_is_refused(tmp_path):
    with pytest.raises(TenantsError, match="cannot read the tenants file .*missing.yaml"):
        Tenants.from_file(tmp_path / "missing.yaml")


@pytest.mark.parametrize(("period", "start", "end"), [
    ("hour", datetime(2026, 2, 28, 23, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)),
    ("day", datetime(2026, 2, 28, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)),
    ("week", datetime(2026, 2, 23, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)),
    ("month", datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)),
])
def test_a_budget_period_is_the_calendar_period_in_utc(period, start, end):
    now = datetime(2026, 2, 28, 23, 59, 30, tzinfo=UTC).timestamp()

    assert Budget(100, period).window(now) == (start.timestamp(), end.timestamp())


def test_the_cli_hashes_a_key_from_stdin_or_the_command_line():
    from_stdin = subprocess.run([sys.executable, "-m", "router.gateway.tenants", "hash-key"], input="sk-test\n",
                                check=True, capture_output=True, text=True, cwd=REPO_ROOT, timeout=30)
    from_option = run_python("-m", "router.gateway.tenants", "hash-key", "--key", "sk-test", timeout=30)

    assert from_stdin.stdout == from_option.stdout == digest("sk-test") + "\n"


def test_the_cli_makes_a_new_key_with_its_digest():
    made = run_python("-m", "router.gateway.tenants", "new-key", timeout=30)

    key_line, digest_line = made.stdout.splitlines()
    key = key_line.removeprefix("key: ")
    assert key.startswith("sk-") and len(key) > 40
    assert digest_line == f"keys_sha256: {digest(key)}"
