"""Image calls of the Backend (docker_backend.py binds them as its methods, wrapped in its error mapping):
commit a container into an image (forks), list images by label, remove one. None starts a container."""

from __future__ import annotations

import docker.errors


def commit(backend, container_id: str, image: str, labels: dict[str, str]) -> str:
    """Commit the container's filesystem into `image` (repository:tag), pausing it for the commit only."""
    repository, _, tag = image.rpartition(":")
    changes = ["LABEL " + " ".join(f'{k}="{v}"' for k, v in labels.items())]
    return backend.api.commit(container_id, repository=repository, tag=tag, pause=True, changes=changes)["Id"]


def list_images(backend, label: str) -> list[dict]:
    """Images carrying `label` (key or key=value): id, tags, labels."""
    return [{"id": i["Id"], "tags": i.get("RepoTags") or [], "labels": i.get("Labels") or {}}
            for i in backend.api.images(filters={"label": label})]


def remove_image(backend, image: str) -> None:
    try:
        backend.api.remove_image(image, force=True, noprune=False)
    except docker.errors.NotFound:
        pass
