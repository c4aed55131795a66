"""Scaling and availability kinds Ketch stores so that real manifest sets apply, but that
nothing acts on; `ketch apply` says so:

- autoscaling/v2 HorizontalPodAutoscaler (no metrics pipeline; `ketch get` shows it as not
  accepted): scale with the Deployment's `replicas` instead;
- policy/v1 PodDisruptionBudget (Ketch never evicts pods).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, PlainValidator, model_validator

from ketch.api.base import (
    Condition,
    KetchModel,
    LabelSelector,
    NonNegativeInt,
    PositiveInt,
    Resource,
    fail,
)
from ketch.api.core import _int_or_percent


class CrossVersionObjectReference(KetchModel):
    api_version: str | None = Field(default=None, alias="apiVersion")
    kind: str
    name: str


class HorizontalPodAutoscalerSpec(KetchModel):
    scale_target_ref: CrossVersionObjectReference = Field(
        alias="scaleTargetRef", description="The object to scale, e.g. a Deployment."
    )
    min_replicas: PositiveInt | None = Field(default=None, alias="minReplicas")
    max_replicas: PositiveInt = Field(alias="maxReplicas")
    metrics: list[dict[str, Any]] | None = Field(
        default=None, description="Resource, Pods, Object, External or ContainerResource."
    )
    behavior: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> HorizontalPodAutoscalerSpec:
        if self.min_replicas is not None and self.min_replicas > self.max_replicas:
            raise fail(
                f"minReplicas ({self.min_replicas}) must not exceed maxReplicas "
                f"({self.max_replicas})",
                "minReplicas",
            )
        return self


class HorizontalPodAutoscalerStatus(KetchModel):
    current_replicas: NonNegativeInt | None = Field(default=None, alias="currentReplicas")
    desired_replicas: NonNegativeInt | None = Field(default=None, alias="desiredReplicas")
    current_metrics: list[dict[str, Any]] | None = Field(default=None, alias="currentMetrics")
    conditions: list[Condition] | None = None
    last_scale_time: str | None = Field(default=None, alias="lastScaleTime")
    observed_generation: NonNegativeInt | None = Field(default=None, alias="observedGeneration")


class HorizontalPodAutoscaler(Resource):
    """autoscaling/v2 HorizontalPodAutoscaler (stored; nothing scales on it)."""

    api_version: Literal["autoscaling/v2"] = Field(default="autoscaling/v2", alias="apiVersion")
    kind: Literal["HorizontalPodAutoscaler"] = "HorizontalPodAutoscaler"
    spec: HorizontalPodAutoscalerSpec
    status: HorizontalPodAutoscalerStatus | None = None


class PodDisruptionBudgetSpec(KetchModel):
    selector: LabelSelector | None = None
    min_available: Annotated[int | str, PlainValidator(_int_or_percent)] | None = Field(
        default=None, alias="minAvailable"
    )
    max_unavailable: Annotated[int | str, PlainValidator(_int_or_percent)] | None = Field(
        default=None, alias="maxUnavailable"
    )
    unhealthy_pod_eviction_policy: Literal["IfHealthyBudget", "AlwaysAllow"] | None = Field(
        default=None, alias="unhealthyPodEvictionPolicy"
    )

    @model_validator(mode="after")
    def _one(self) -> PodDisruptionBudgetSpec:
        if self.min_available is not None and self.max_unavailable is not None:
            raise fail("set minAvailable or maxUnavailable, not both", "maxUnavailable")
        return self


class PodDisruptionBudget(Resource):
    """policy/v1 PodDisruptionBudget (stored; Ketch never evicts pods)."""

    api_version: Literal["policy/v1"] = Field(default="policy/v1", alias="apiVersion")
    kind: Literal["PodDisruptionBudget"] = "PodDisruptionBudget"
    spec: PodDisruptionBudgetSpec = Field(default_factory=PodDisruptionBudgetSpec)
    status: dict[str, Any] | None = None


__all__ = [
    "CrossVersionObjectReference",
    "HorizontalPodAutoscaler",
    "HorizontalPodAutoscalerSpec",
    "HorizontalPodAutoscalerStatus",
    "PodDisruptionBudget",
    "PodDisruptionBudgetSpec",
]
