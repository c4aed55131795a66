"""Ketch's resource API: typed Kubernetes, Istio and Gateway API objects.

Everything else in Ketch (CLI, store, control plane, proxies) consumes these models:

- `load(["file.yaml", "dir/", "-"])` reads YAML/JSON into `LoadResult(objects, warnings)`,
  raising `ResourceError` (a list of `Problem`s: file, doc, field path, message) for every
  mistake found;
- `from_manifest(dict)` / `to_manifest(resource)` convert between wire dicts (camelCase,
  as users write them) and models (snake_case attributes);
- `resolve_kind("po")` maps a user's word to a `KindInfo` in `KINDS`;
- `apply_namespace_default(obj, namespace)` fills metadata.namespace like kubectl.
"""

from ketch.api import wellknown
from ketch.api.base import LabelSelector, ObjectMeta, Resource
from ketch.api.core import Deployment, Namespace, Node, Pod, Service, ServiceAccount
from ketch.api.errors import Problem, ResourceError
from ketch.api.gateway import Gateway, HTTPRoute
from ketch.api.loader import (
    LoadedObject,
    LoadResult,
    apply_namespace_default,
    apply_namespace_defaults,
    from_manifest,
    load,
    load_text,
    to_manifest,
)
from ketch.api.registry import KINDS, KindInfo, resolve_kind
from ketch.api.security import (
    AuthorizationPolicy,
    PeerAuthentication,
    RequestAuthentication,
    is_dry_run,
)
from ketch.api.semantics import warnings_for

__all__ = [
    "KINDS",
    "AuthorizationPolicy",
    "Deployment",
    "Gateway",
    "HTTPRoute",
    "KindInfo",
    "LabelSelector",
    "LoadResult",
    "LoadedObject",
    "Namespace",
    "Node",
    "ObjectMeta",
    "PeerAuthentication",
    "Pod",
    "Problem",
    "RequestAuthentication",
    "Resource",
    "ResourceError",
    "Service",
    "ServiceAccount",
    "apply_namespace_default",
    "apply_namespace_defaults",
    "from_manifest",
    "is_dry_run",
    "load",
    "load_text",
    "resolve_kind",
    "to_manifest",
    "warnings_for",
    "wellknown",
]
