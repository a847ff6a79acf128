"""POST /v1/nodes/register through the real app: a proposed node token shorter than 32
characters is a 422 naming ``node_token``; a proposal of the right length makes the node
under the proposed id and token, and sending it again answers the same."""

from __future__ import annotations

import secrets

from fastapi.testclient import TestClient

JOIN = {"Authorization": "Bearer join-token"}


def test_a_proposed_node_token_shorter_than_32_characters_is_a_422_naming_it(
    api: TestClient,
) -> None:
    body = {"name": "w1", "address": "10.0.0.1", "node_id": secrets.token_hex(6)}
    resp = api.post("/v1/nodes/register", json={**body, "node_token": "x" * 31}, headers=JOIN)
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"] == ["body", "node_token"]
    assert "node_token" in resp.json()["message"]
    nodes = api.get("/v1/nodes", headers={"Authorization": "Bearer admin-token"}).json()
    assert nodes == []  # nothing made


def test_a_proposal_is_the_node_and_sending_it_again_answers_the_same(api: TestClient) -> None:
    body = {
        "name": "w1",
        "address": "10.0.0.1",
        "node_id": secrets.token_hex(6),
        "node_token": secrets.token_urlsafe(32),
    }
    first = api.post("/v1/nodes/register", json=body, headers=JOIN)
    again = api.post("/v1/nodes/register", json=body, headers=JOIN)
    assert first.status_code == again.status_code == 200, again.text
    for answer in (first.json(), again.json()):
        assert (answer["node_id"], answer["node_token"]) == (body["node_id"], body["node_token"])
        assert answer["known"] is False
    beat = api.post(
        f"/v1/nodes/{body['node_id']}/heartbeat",
        json={},
        headers={"Authorization": f"Bearer {body['node_token']}"},
    )
    assert beat.status_code == 200, beat.text
