"""autoscaling/v2 HorizontalPodAutoscaler: stored so that real manifest sets apply, but
nothing acts on it (Ketch has no metrics pipeline); `ketch apply` says so, and `ketch get`
shows it as not accepted. Scale with the Deployment's `replicas` instead.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ketch.api.base import Condition, KetchModel, NonNegativeInt, PositiveInt, Resource, fail


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


__all__ = [
    "CrossVersionObjectReference",
    "HorizontalPodAutoscaler",
    "HorizontalPodAutoscalerSpec",
    "HorizontalPodAutoscalerStatus",
]
