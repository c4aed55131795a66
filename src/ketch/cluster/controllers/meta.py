"""Small pure helpers the controllers share: time stamps, owner references, conditions,
Kubernetes' "safe" name alphabet and the pod-template hash.

Everything here is a function of its arguments (no store, no clock): controllers pass `now`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from ketch.api.base import Condition, OwnerReference, Resource

# Kubernetes' alphabet for generated name suffixes: no vowels (no accidental words), no
# look-alikes (0/o, 1/l) — the alphabet apimachinery's rand.String uses.
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
POD_TEMPLATE_HASH_LABEL = "pod-template-hash"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
TERMINAL_PHASES = ("Succeeded", "Failed")  # a tuple: `in` must not hash garbage


def parse_time(value: str | None) -> dt.datetime | None:
    """An RFC 3339 stamp as the store and the kubelet write it; None if absent or garbage."""
    if not value:
        return None
    try:
        stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)


def fmt_time(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix(length: int = 5) -> str:
    """`<rs>-<5 chars>` pod names, as the ReplicaSet controller's generateName makes them."""
    return "".join(secrets.choice(SAFE_ALPHABET) for _ in range(length))


def safe_encode(text: str) -> str:
    """Map each character into SAFE_ALPHABET (by code point), as Kubernetes encodes the
    decimal pod-template hash: stable, and never a word or an all-digit label."""
    return "".join(SAFE_ALPHABET[ord(c) % len(SAFE_ALPHABET)] for c in text)


def short_hash(value: Any, length: int = 10) -> str:
    """A stable name-safe hash of a JSON-able value (key order does not matter)."""
    digest = hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())
    number = int.from_bytes(digest.digest()[:4], "big")  # 32 bits, like Kubernetes' fnv32a
    return safe_encode(str(number))[:length]


def owner_reference(owner: Resource) -> dict[str, Any]:
    """The controller reference a dependent carries (GC deletes it with its owner)."""
    return {
        "apiVersion": owner.api_version,
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def controller_of(obj: Resource) -> OwnerReference | None:
    for ref in obj.metadata.owner_references or []:
        if ref.controller:
            return ref
    return None


def field(obj: Any, name: str) -> dict[str, Any]:
    """`obj[name]` if both are mappings, else {}: raw manifests in the store were validated
    by whoever wrote them, which a controller must not count on."""
    value = obj.get(name) if isinstance(obj, Mapping) else None
    return value if isinstance(value, dict) else {}


def items(obj: Any, name: str) -> list[dict[str, Any]]:
    """The mappings in the list `obj[name]`; anything else is ignored."""
    value = obj.get(name) if isinstance(obj, Mapping) else None
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def controller_ref_of(manifest: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The same on a raw manifest (the watch dispatcher reads events without parsing)."""
    for ref in items(field(manifest, "metadata"), "ownerReferences"):
        if ref.get("controller"):
            return ref
    return None


def is_controlled_by(obj: Resource, owner: Resource) -> bool:
    ref = controller_of(obj)
    return ref is not None and bool(owner.metadata.uid) and ref.uid == owner.metadata.uid


def find_condition(conditions: Sequence[Condition] | None, type_: str) -> Condition | None:
    for cond in conditions or []:
        if cond.type == type_:
            return cond
    return None


def set_condition(
    conditions: Sequence[Condition] | None, new: Condition, *, now: dt.datetime
) -> list[Condition]:
    """Conditions with `new` merged in: lastTransitionTime kept unless the status changes
    (Kubernetes' rule); other types untouched."""
    old = find_condition(conditions, new.type)
    merged = new.model_copy()
    if merged.last_transition_time is None:
        same = old is not None and old.status == new.status
        merged.last_transition_time = (
            old.last_transition_time if same and old is not None else fmt_time(now)
        )
    out = [merged if cond.type == new.type else cond for cond in conditions or []]
    if old is None:
        out.append(merged)
    return out


def condition_dict(cond: Condition) -> dict[str, Any]:
    return cond.model_dump(by_alias=True, exclude_none=True)
