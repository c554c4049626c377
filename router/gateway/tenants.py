"""The gateway's tenants: who a request's API key belongs to, and the limits that tenant's requests
are held to. A tenants file (YAML) lists each tenant with the sha256 digests of its keys, never the
keys themselves, so a leaked file grants nothing:

    tenants:
      - name: acme
        keys_sha256: [9f86d08...]       # `python -m router.gateway.tenants hash-key` prints one
        requests_per_minute: 600         # each limit optional: absent = unlimited
        tokens_per_minute: 100000        # prompt + completion
        max_concurrent: 8
        budget: {tokens: 5000000, period: month}   # hour | day | week | month, calendar periods in UTC
        models: [auto, llm-small]        # the OpenAI `model` names it may ask for; absent = all
      - name: ops
        admin: true                      # may read every tenant's usage
        keys_sha256: [...]

`python -m router.gateway.tenants new-key` prints a fresh key and its digest."""

from __future__ import annotations

import argparse
import calendar
import hashlib
import hmac
import re
import secrets
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

BEARER_SCHEME = "bearer"
KEY_PREFIX = "sk-"
KEY_RANDOM_BYTES = 32
PERIODS = ("hour", "day", "week", "month")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")

PositiveInt = Annotated[int, Field(strict=True, gt=0)]


class TenantsError(Exception):
    """The tenants file cannot be read or is not valid: the message names the file, the line and
    what is allowed there."""


@dataclass(frozen=True, slots=True)
class Budget:
    """At most `tokens` tokens per calendar `period` (UTC)."""

    tokens: int
    period: str

    def window(self, now_unix: float) -> tuple[float, float]:
        """The start and end (unix seconds) of the calendar period that contains `now_unix`."""
        now = datetime.fromtimestamp(now_unix, UTC)
        start = now.replace(minute=0, second=0, microsecond=0)
        if self.period == "hour":
            return start.timestamp(), (start + timedelta(hours=1)).timestamp()
        start = start.replace(hour=0)
        if self.period == "day":
            return start.timestamp(), (start + timedelta(days=1)).timestamp()
        if self.period == "week":
            start -= timedelta(days=start.weekday())  # ISO weeks start on Monday
            return start.timestamp(), (start + timedelta(weeks=1)).timestamp()
        start = start.replace(day=1)
        days_in_month = calendar.monthrange(start.year, start.month)[1]
        return start.timestamp(), (start + timedelta(days=days_in_month)).timestamp()


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    """What a tenant may do; None is unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None
    budget: Budget | None = None
    models: frozenset[str] | None = None

    @property
    def limited(self) -> bool:
        """Whether any of the metered limits (rates, concurrency, budget) applies; the models
        allow-list is checked by name and needs no metering."""
        limits = (self.requests_per_minute, self.tokens_per_minute, self.max_concurrent, self.budget)
        return any(limit is not None for limit in limits)

    def allows_model(self, name: str) -> bool:
        return self.models is None or name in self.models


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    policy: TenantPolicy
    admin: bool = False  # may read every tenant's usage


def _sha256_hex(digest: str) -> str:
    if not SHA256_HEX.fullmatch(digest.lower()):
        raise ValueError(f"{digest!r} is not a sha256 hex digest (64 characters 0-9 a-f; "
                         "`python -m router.gateway.tenants hash-key` prints one)")
    return digest.lower()


Sha256Hex = Annotated[str, Field(strict=True), AfterValidator(_sha256_hex)]


class BudgetEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: PositiveInt
    period: Literal["hour", "day", "week", "month"]


class TenantEntry(BaseModel):
    """One tenant as the file writes it."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(strict=True, min_length=1)]
    keys_sha256: Annotated[list[Sha256Hex], Field(min_length=1)]
    requests_per_minute: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = None
    max_concurrent: PositiveInt | None = None
    budget: BudgetEntry | None = None
    models: Annotated[list[Annotated[str, Field(strict=True, min_length=1)]], Field(min_length=1)] | None = None
    admin: Annotated[bool, Field(strict=True)] = False

    def tenant(self) -> Tenant:
        budget = Budget(self.budget.tokens, self.budget.period) if self.budget else None
        models = frozenset(self.models) if self.models is not None else None
        policy = TenantPolicy(self.requests_per_minute, self.tokens_per_minute, self.max_concurrent, budget, models)
        return Tenant(self.name, policy, self.admin)


class TenantsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenants: Annotated[list[TenantEntry], Field(min_length=1)]


class Tenants:
    """The tenants a request may authenticate as; with none configured, no authentication."""

    def __init__(self, tenants_by_digest: list[tuple[bytes, Tenant]]) -> None:
        self._tenants_by_digest = tenants_by_digest
        self._tenants = list({tenant.name: tenant for _, tenant in tenants_by_digest}.values())

    @classmethod
    def from_file(cls, path: str | Path) -> Tenants:
        entries = _parse_tenants_file(Path(path))
        return cls([(digest.encode(), entry.tenant()) for entry in entries for digest in entry.keys_sha256])

    @classmethod
    def from_api_keys(cls, keys: list[str]) -> Tenants:
        """The flat keys list of `--api_keys_file`: each key a tenant without limits, named
        key-1, key-2, ... in the list's order."""
        return cls([(hash_key(key.encode()).encode(), Tenant(f"key-{number}", TenantPolicy()))
                    for number, key in enumerate(keys, start=1)])

    @classmethod
    def none(cls) -> Tenants:
        return cls([])

    @property
    def required(self) -> bool:
        return bool(self._tenants_by_digest)

    @property
    def names(self) -> list[str]:
        return [tenant.name for tenant in self._tenants]

    def __len__(self) -> int:
        return len(self._tenants)

    def by_name(self, name: str) -> Tenant | None:
        """The tenant of this name (work it asked for earlier, run in process: a batch), or None."""
        return next((tenant for tenant in self._tenants if tenant.name == name), None)

    def authenticate(self, authorization_header: str | None) -> Tenant | None:
        """The tenant whose key this `Authorization: Bearer <key>` header carries, or None. The
        presented key's digest is compared with every stored digest, each in constant time, so
        the answer's timing tells nothing about which digest came close."""
        presented = bearer_token(authorization_header)
        if presented is None:
            return None
        digest = hash_key(presented).encode()
        found = None
        for stored, tenant in self._tenants_by_digest:
            if hmac.compare_digest(digest, stored) and found is None:
                found = tenant
        return found


def bearer_token(authorization_header: str | None) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header (scheme in any case), or None."""
    scheme, _, token = (authorization_header or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != BEARER_SCHEME or not token:
        return None
    return token.encode()


def hash_key(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()


def _parse_tenants_file(path: Path) -> list[TenantEntry]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise TenantsError(f"cannot read the tenants file {str(path)!r}: {exc}") from None
    root, data = _compose_and_load(path, text)
    if data is None:
        raise TenantsError(f"the tenants file {str(path)!r} is empty: it needs a `tenants:` list")
    if repeated_fields := _repeated_fields(root):
        raise _invalid_file(path, repeated_fields)
    try:
        entries = TenantsFile.model_validate(data).tenants
    except ValidationError as exc:
        raise _invalid_file(path, [_describe(root, error) for error in exc.errors()]) from None
    if repeated := _repeated_names_and_digests(root, entries):
        raise _invalid_file(path, repeated)
    return entries


def _invalid_file(path: Path, problems: list[str]) -> TenantsError:
    return TenantsError(f"invalid tenants file {str(path)!r}:\n" + "\n".join(problems))


def _compose_and_load(path: Path, text: str) -> tuple[yaml.Node | None, object]:
    """The document's node tree (which knows each entry's line) and the data it holds."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        return root, loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        raise TenantsError(f"the tenants file {str(path)!r} is not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def _describe(root: yaml.Node, error: dict) -> str:
    location = error["loc"]
    field = _field_path(location)
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(_allowed_fields(location))
        return f"  line {_line_of(root, location)}: {field}: unknown field; allowed: {allowed}"
    message = error["msg"].removeprefix("Value error, ")
    return f"  line {_line_of(root, location)}: {field}: {message}"


def _allowed_fields(location: tuple) -> list[str]:
    """The fields of the model that `location` (ending in the unknown field) points into."""
    parent = location[:-1]
    if not parent:
        return list(TenantsFile.model_fields)
    if parent[-1] == "budget":
        return list(BudgetEntry.model_fields)
    return list(TenantEntry.model_fields)


def _repeated_fields(node: yaml.Node) -> list[str]:
    """Fields written twice in one entry: YAML would silently keep the last."""
    problems = []
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key, value in node.value:
            if key.value in seen:
                problems.append(f"  line {key.start_mark.line + 1}: {key.value}: written twice in one entry; "
                                "each field may appear once")
            seen.add(key.value)
            problems += _repeated_fields(value)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            problems += _repeated_fields(item)
    return problems


def _repeated_names_and_digests(root: yaml.Node, entries: list[TenantEntry]) -> list[str]:
    problems = []
    first_of_name: dict[str, int] = {}
    first_of_digest: dict[str, str] = {}
    for index, entry in enumerate(entries):
        location = ("tenants", index, "name")
        if entry.name in first_of_name:
            problems.append(f"  line {_line_of(root, location)}: {_field_path(location)}: the name {entry.name!r} "
                            f"is already the name of tenants[{first_of_name[entry.name]}]; names must be unique")
        first_of_name.setdefault(entry.name, index)
        for position, digest in enumerate(entry.keys_sha256):
            location = ("tenants", index, "keys_sha256", position)
            owner = first_of_digest.setdefault(digest, entry.name)
            if owner != entry.name:
                problems.append(f"  line {_line_of(root, location)}: {_field_path(location)}: this key digest "
                                f"is already a key of tenant {owner!r}; each key belongs to one tenant")
    return problems


def _field_path(location: tuple) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or "the file"


def _line_of(root: yaml.Node, location: tuple) -> int:
    """The line (from 1) of the deepest node of the file along `location`: a field's key, a list's item."""
    node = root
    line = node.start_mark.line
    for part in location:
        if isinstance(node, yaml.MappingNode):
            pair = next(((key, value) for key, value in node.value if key.value == part), None)
            if pair is None:
                break
            line, node = pair[0].start_mark.line, pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line
        else:
            break
    return line + 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m router.gateway.tenants",
                                     description="Keys for the gateway's tenants file.")
    commands = parser.add_subparsers(dest="command", required=True)
    hash_command = commands.add_parser("hash-key", help="print the sha256 digest of a key (read from stdin)")
    hash_command.add_argument("--key", help="the key, instead of reading it from stdin")
    commands.add_parser("new-key", help="print a fresh random key and its sha256 digest")
    arguments = parser.parse_args(argv)
    if arguments.command == "hash-key":
        key = arguments.key if arguments.key is not None else sys.stdin.read().strip()
        if not key:
            parser.error("hash-key needs a key: on stdin or as --key")
        print(hash_key(key.encode()))
    else:
        key = KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)
        print(f"key: {key}\nkeys_sha256: {hash_key(key.encode())}")


if __name__ == "__main__":
    main()
