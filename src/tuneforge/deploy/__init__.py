"""Deploy bundles: a container image plus one platform's manifests (docker, k8s, aws, gcp, azure)."""

from tuneforge.deploy.bundle import TARGETS, deploy

__all__ = ["TARGETS", "deploy"]
