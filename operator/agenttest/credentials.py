"""Model credentials: spec.model(s).credentialsSecretRef, read when a test launches.

The operator reads each referenced Secret from the test's namespace and hands the
values to the judge only (the backends put them where the run key goes: the judge's
environment, never the agent host's, the package, status or an Event). The judge's
gateway adds the token or header to Ollama calls, or signs Bedrock calls with the
keys (or with a role it assumes). A Secret that is missing, not labelled for this use
or lacking a key ends the test Error with a message naming the Secret and the key.

Why the label: whoever may create an AgentTest chooses the model endpoint the
credential is sent to. Without an opt-in, a tester who may not read a namespace's
Secrets could have the operator send one (anything with a ``token`` key) to an
endpoint of their own. Only Secrets labelled ``agenttest.dev/model-credentials:
"true"`` are used.

`parse` is pure; `read_for` does the reading.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from agenttest import kubeapi
from agenttest.models import AgentTestSpec, ModelProvider, ModelSpec
from agenttest.runner.modelauth import (
    AWS_ACCESS_KEY_ID,
    AWS_EXTERNAL_ID,
    AWS_ROLE_ARN,
    AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN,
    JUDGE_ENTRY,
    OLLAMA_HEADER,
    OLLAMA_TOKEN,
    OLLAMA_VALUE,
)

CREDENTIALS_LABEL = "agenttest.dev/model-credentials"

# A header the gateway sets for its own hop, or that would change how the request is
# framed, cannot carry a credential.
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "content-type", "expect"}
)
_HEADER_NAME_CHARACTERS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


class CredentialsUnavailable(RuntimeError):
    """A credentials Secret cannot be used; the message names the Secret and the key."""


def _text(data: Mapping[str, str], key: str, where: str) -> str | None:
    """The key's value (Secret data is base64), None when absent or empty."""
    if key not in data:
        return None
    try:
        value = base64.b64decode(data[key], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise CredentialsUnavailable(f"{where} key {key!r} is not UTF-8 text") from None
    # A Secret made with `kubectl create secret --from-file` often ends in a newline.
    value = value.strip()
    if "\n" in value or "\r" in value:
        raise CredentialsUnavailable(f"{where} key {key!r} must be one line")
    return value or None


def parse(provider: ModelProvider, where: str, data: Mapping[str, str]) -> dict[str, str]:
    """The credential the judge gets for one model, from the Secret's (base64) data.

    ``where`` names the Secret in messages ("Secret ns/name"). Raises
    CredentialsUnavailable naming the missing or conflicting key.
    """

    def get(key: str) -> str | None:
        return _text(data, key, where)

    if provider == ModelProvider.OLLAMA:
        token, header, value = get(OLLAMA_TOKEN), get(OLLAMA_HEADER), get(OLLAMA_VALUE)
        if token is not None and (header is not None or value is not None):
            raise CredentialsUnavailable(
                f"{where} sets both key {OLLAMA_TOKEN!r} and keys {OLLAMA_HEADER!r}/"
                f"{OLLAMA_VALUE!r}: an ollama credential is one or the other"
            )
        if token is not None:
            return {OLLAMA_TOKEN: token}
        if header is None and value is None:
            raise CredentialsUnavailable(
                f"{where} has no key {OLLAMA_TOKEN!r} (or keys {OLLAMA_HEADER!r} and "
                f"{OLLAMA_VALUE!r}) for an ollama model"
            )
        if header is None:
            raise CredentialsUnavailable(f"{where} has no key {OLLAMA_HEADER!r}")
        if value is None:
            raise CredentialsUnavailable(f"{where} has no key {OLLAMA_VALUE!r}")
        lowered = header.lower()
        if not set(lowered) <= _HEADER_NAME_CHARACTERS or lowered in _RESERVED_HEADERS:
            raise CredentialsUnavailable(
                f"{where} key {OLLAMA_HEADER!r} is not a header name a credential can use"
            )
        return {OLLAMA_HEADER: header, OLLAMA_VALUE: value}

    role_arn = get(AWS_ROLE_ARN)
    key_id, secret_key = get(AWS_ACCESS_KEY_ID), get(AWS_SECRET_ACCESS_KEY)
    if role_arn is not None:
        if key_id is not None or secret_key is not None:
            raise CredentialsUnavailable(
                f"{where} sets both key {AWS_ROLE_ARN!r} and access keys: a bedrock "
                "credential is one or the other"
            )
        if not role_arn.startswith("arn:"):
            raise CredentialsUnavailable(f"{where} key {AWS_ROLE_ARN!r} is not an ARN")
        assumed = {AWS_ROLE_ARN: role_arn}
        if (external_id := get(AWS_EXTERNAL_ID)) is not None:
            assumed[AWS_EXTERNAL_ID] = external_id
        return assumed
    if key_id is None and secret_key is None:
        raise CredentialsUnavailable(
            f"{where} has no key {AWS_ACCESS_KEY_ID!r} (with {AWS_SECRET_ACCESS_KEY!r}) "
            f"or {AWS_ROLE_ARN!r} for a bedrock model"
        )
    if key_id is None:
        raise CredentialsUnavailable(f"{where} has no key {AWS_ACCESS_KEY_ID!r}")
    if secret_key is None:
        raise CredentialsUnavailable(f"{where} has no key {AWS_SECRET_ACCESS_KEY!r}")
    keys = {AWS_ACCESS_KEY_ID: key_id, AWS_SECRET_ACCESS_KEY: secret_key}
    if (session_token := get(AWS_SESSION_TOKEN)) is not None:
        keys[AWS_SESSION_TOKEN] = session_token
    return keys


def usable(where: str, labels: Mapping[str, str] | None) -> None:
    """Raise unless the Secret is labelled for use as a model credential."""
    if (labels or {}).get(CREDENTIALS_LABEL) != "true":
        raise CredentialsUnavailable(
            # Not "label=true": the operator's redaction masks what follows a name
            # with "credential" in it and "=" or ":" after, the value included.
            f"{where} is not labelled for use by AgentTests; label it {CREDENTIALS_LABEL} "
            "with the value true"
        )


def referenced(spec: AgentTestSpec) -> dict[str, ModelSpec]:
    """The models (by matrix entry name, and JUDGE_ENTRY) that name a credential."""
    wanted: dict[str, ModelSpec] = {
        entry.name: entry for entry in spec.model_entries() if entry.credentials_secret_ref
    }
    if any(case.expect.judge is not None for case in spec.cases):
        judge = spec.judge_model or spec.primary_model
        if judge.credentials_secret_ref is not None:
            wanted[JUDGE_ENTRY] = judge
    return wanted


async def read_for(namespace: str, spec: AgentTestSpec) -> dict[str, dict[str, str]]:
    """The credentials of the test's models, for the judge; {} when none names one."""
    from kubernetes.client.exceptions import ApiException

    read: dict[str, tuple[Mapping[str, str] | None, Mapping[str, str]]] = {}
    credentials: dict[str, dict[str, str]] = {}
    for entry, model in referenced(spec).items():
        assert model.credentials_secret_ref is not None
        name = model.credentials_secret_ref.name
        where = f"Secret {namespace}/{name}"
        if name not in read:
            try:
                read[name] = await kubeapi.read_secret_labelled(namespace, name)
            except kubeapi.Gone:
                raise CredentialsUnavailable(f"{where} not found") from None
            except ApiException as error:
                if error.status != 403:
                    raise
                raise CredentialsUnavailable(
                    f"{where} cannot be read: the operator may not get Secrets in namespace "
                    f"{namespace} (bind the ClusterRole agenttest-model-credentials there)"
                ) from None
        labels, data = read[name]
        usable(where, labels)
        credentials[entry] = parse(model.provider, where, data)
    return credentials
