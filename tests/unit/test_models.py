"""ServiceSpec validation: what the API, the CLI and the store agree is a valid service."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from orchestrify.models import ServiceSpec


@pytest.mark.parametrize(
    "image",
    [
        "nginx",
        "nginx:1.27",
        "orchestrify/demo:latest",
        "localhost/demo",
        "localhost:5000/team/demo:v1",
        "registry.example.com/team/demo",
        "Registry.Example.com:443/demo@sha256:" + "a" * 64,
        "myhost:5000/demo",
    ],
)
def test_valid_image_references(image: str) -> None:
    assert ServiceSpec(name="web", image=image).image == image


@pytest.mark.parametrize(
    "image", ["UPPER/case", "Nginx", "nginx:", "bad image", "a//b", "-lead/x", "x/Y:1"]
)
def test_invalid_image_references(image: str) -> None:
    with pytest.raises(ValidationError) as err:
        ServiceSpec(name="web", image=image)
    assert err.value.errors()[0]["loc"] == ("image",)
