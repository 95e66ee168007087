"""The models' credentials as the judge gets them, and what its gateway makes of them.

The operator reads each credentialsSecretRef (agenttest.credentials) and hands the
judge, in MODEL_CREDENTIALS_ENV, a JSON object: matrix entry name (or JUDGE_ENTRY for
the judge model) to the Secret's keys, one of these forms:

* ollama: ``{"token": ...}`` (sent as ``Authorization: Bearer ...``) or
  ``{"header": ..., "value": ...}`` (sent as that header);
* bedrock: ``{"aws_access_key_id", "aws_secret_access_key"[, "aws_session_token"]}``
  (Bedrock calls are signed with them) or ``{"role_arn"[, "external_id"]}`` (assumed
  with STS using the execution's own credentials, and signed as that role).

The judge removes the variable from its environment before starting anything, gives
each gateway its model's credential, and redacts every secret value from all it prints.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, MutableMapping
from typing import Any

from agenttest.runner.protocol import MODEL_CREDENTIALS_ENV

# The judge model's entry (not a valid matrix entry name, so it cannot clash).
JUDGE_ENTRY = "@judge"

OLLAMA_TOKEN = "token"
OLLAMA_HEADER = "header"
OLLAMA_VALUE = "value"
AWS_ACCESS_KEY_ID = "aws_access_key_id"
AWS_SECRET_ACCESS_KEY = "aws_secret_access_key"
AWS_SESSION_TOKEN = "aws_session_token"
AWS_ROLE_ARN = "role_arn"
AWS_EXTERNAL_ID = "external_id"

# The keys whose values are secret: redacted wherever the judge prints.
SECRET_KEYS = (OLLAMA_TOKEN, OLLAMA_VALUE, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN)

Credential = Mapping[str, str]


class CredentialsError(ValueError):
    """The variable holds something other than the operator writes."""


def take(environ: MutableMapping[str, str]) -> dict[str, dict[str, str]]:
    """The credentials, removed from the environment so no child inherits them."""
    text = environ.pop(MODEL_CREDENTIALS_ENV, None)
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except ValueError:
        raise CredentialsError(f"${MODEL_CREDENTIALS_ENV} is not JSON") from None
    if not isinstance(raw, dict) or not all(
        isinstance(entry, dict) and all(isinstance(v, str) for v in entry.values())
        for entry in raw.values()
    ):
        raise CredentialsError(f"${MODEL_CREDENTIALS_ENV} is not an object of string maps")
    return {str(name): {str(k): v for k, v in entry.items()} for name, entry in raw.items()}


def secret_values(credentials: Mapping[str, Credential]) -> list[str]:
    """Every value that must never be shown."""
    return [one[key] for one in credentials.values() for key in SECRET_KEYS if one.get(key)]


def ollama_headers(credential: Credential | None) -> tuple[tuple[str, str], ...]:
    """The header the gateway adds to an Ollama model's calls (none without one)."""
    if not credential:
        return ()
    if OLLAMA_TOKEN in credential:
        return (("Authorization", f"Bearer {credential[OLLAMA_TOKEN]}"),)
    return ((credential[OLLAMA_HEADER], credential[OLLAMA_VALUE]),)


def bedrock_signer(credential: Credential | None, region: str | None) -> Any:
    """The gateway's credentials provider for a Bedrock model; None: the default chain."""
    if not credential:
        return None
    from agenttest.runner.gateway import assumed_role, static_credentials

    if AWS_ROLE_ARN in credential:
        return assumed_role(credential[AWS_ROLE_ARN], region, credential.get(AWS_EXTERNAL_ID))
    return static_credentials(
        credential[AWS_ACCESS_KEY_ID],
        credential[AWS_SECRET_ACCESS_KEY],
        credential.get(AWS_SESSION_TOKEN),
    )


class Redactor:
    """Replaces each exact secret value (and its JSON-escaped form) with [REDACTED]."""

    MASK = "[REDACTED]"

    def __init__(self, values: list[str]) -> None:
        forms: set[str] = set()
        for value in values:
            if value:
                forms.add(value)
                forms.add(json.dumps(value)[1:-1])  # as it reads inside a JSON string
        # Longest first, so a value containing another is masked whole.
        self._forms = sorted(forms, key=len, reverse=True)
        self._raw = sorted({value.encode() for value in values if value}, key=len, reverse=True)

    @property
    def longest(self) -> int:
        """Bytes of the longest value: how much output to hold back before cutting it."""
        return max((len(value) for value in self._raw), default=0)

    def raw(self, data: bytes) -> bytes:
        """Output bytes (the agent host's, as printed) with every value masked."""
        for value in self._raw:
            if value in data:
                data = data.replace(value, self.MASK.encode())
        return data

    def __bool__(self) -> bool:
        return bool(self._forms)

    def text(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, self.MASK)
        return text

    def value(self, value: Any) -> Any:
        """A JSON-ready value with every string redacted (keys included)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list | tuple):
            return [self.value(item) for item in value]
        if isinstance(value, dict):
            return {self.text(str(k)): self.value(v) for k, v in value.items()}
        return value
