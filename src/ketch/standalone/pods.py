"""`ketch ztunnel run --control-plane ... --pods FILE`: the pods this node proxy serves, from
a local file, as a STAND-IN for the node agent's ZDS handoff (not built yet).

In Istio the node agent (istio-cni) sends ztunnel each pod on the node with its network
namespace over ZDS. Until Ketch's node agent does, a connected-mode proxy reads them from a
YAML list and watches it like file mode watches its config (same enrollment code,
`ketch.standalone.run`):

    - name: web-1              # the Pod's name and namespace (namespace default: default)
      namespace: app
      netns: /run/netns/web-1  # a path (/run/netns/NAME, /proc/PID/ns/net) or a name
      serviceAccount: web      # default: default
      uid: Kubernetes//Pod/app/web-1   # default: istiod's uid <cluster>//Pod/<ns>/<name>

The pod's workload (and so its identity and policy) comes over xDS; the proxy matches it by
uid (then namespace/name, then address). The redirection rules inside each pod are not the
proxy's job (`ketch.netns.install_rules`, the node agent's).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field, ValidationError

from ketch.control.translate.workloads import workload_uid
from ketch.standalone.config import ConfigError, LocalPod, _Model, field_problems

__all__ = ["PodEntry", "parse_pods", "read_pods"]

DEFAULT_CLUSTER_ID = "Kubernetes"


class PodEntry(_Model):
    name: str = Field(min_length=1)
    namespace: str = Field(default="default", min_length=1)
    netns: str = Field(min_length=1)
    service_account: str = Field(default="default", alias="serviceAccount", min_length=1)
    uid: str | None = Field(default=None, min_length=1)


def parse_pods(
    text: str, source: str = "<pods>", *, cluster_id: str = DEFAULT_CLUSTER_ID
) -> tuple[LocalPod, ...]:
    """Parse and validate a pods file (a YAML list; empty = no pods). Raises `ConfigError`
    listing every problem with its place (`[1].netns: ...`)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{source}:{where}: invalid YAML: {e}"]) from e
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(
            [
                f"{source}: expected a list of pods ({{name, namespace, netns}}), "
                f"got {type(raw).__name__}"
            ]
        )
    problems: list[str] = []
    pods: list[LocalPod] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        try:
            entry = PodEntry.model_validate(item)
        except ValidationError as err:
            problems += field_problems(source, f"[{i}]", err, PodEntry)
            continue
        uid = entry.uid or workload_uid(cluster_id, entry.namespace, entry.name)
        if uid in seen:
            problems.append(f"{source}: [{i}]: pod {uid} is already listed at [{seen[uid]}]")
            continue
        seen[uid] = i
        pods.append(
            LocalPod(uid, entry.name, entry.namespace, entry.service_account, "", entry.netns)
        )
    if problems:
        raise ConfigError(problems)
    return tuple(pods)


def read_pods(path: str | Path, *, cluster_id: str = DEFAULT_CLUSTER_ID) -> tuple[LocalPod, ...]:
    """Read and validate a pods file. Raises `ConfigError`."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError([f"{p}: cannot read the pods file: {e.strerror or e}"]) from e
    except UnicodeDecodeError as e:
        raise ConfigError([f"{p}: the pods file is not UTF-8 text: {e}"]) from e
    return parse_pods(text, str(p), cluster_id=cluster_id)
