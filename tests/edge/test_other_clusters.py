"""A controller on a new or wiped store (another cluster id) never empties Nginx: the
edge keeps the services of the old cluster that the new one does not serve."""

from __future__ import annotations

from orchestrify.edge.view import keep_other_clusters, kept_services
from orchestrify.models import UpstreamReplica, Upstreams, UpstreamService


def svc(name: str, *addresses: str) -> UpstreamService:
    return UpstreamService(
        name=name,
        port=8000,
        drain_s=10,
        replicas=[
            UpstreamReplica(id=f"{name}-{i}", address=a, node="n1") for i, a in enumerate(addresses)
        ],
    )


def ups(cluster: str | None, *services: UpstreamService) -> Upstreams:
    return Upstreams(version=1, services=list(services), cluster_id=cluster)


OLD = ups("old", svc("web", "10.0.0.1:1", "10.0.0.1:2"), svc("api", "10.0.0.1:3"))


def test_the_same_cluster_is_rendered_as_it_is_even_when_it_empties_a_service() -> None:
    new = ups("old", svc("web"))
    assert keep_other_clusters(OLD, new) == new


def test_a_wiped_store_keeps_every_service_it_does_not_serve() -> None:
    merged = keep_other_clusters(OLD, ups("new"))
    assert kept_services(merged) == ["api", "web"]
    web = next(s for s in merged.services if s.name == "web")
    assert [r.address for r in web.replicas] == ["10.0.0.1:1", "10.0.0.1:2"]
    assert web.kept_from_cluster == "old"


def test_a_service_re_created_without_replicas_yet_keeps_the_old_ones() -> None:
    merged = keep_other_clusters(OLD, ups("new", svc("web")))
    assert kept_services(merged) == ["api", "web"]


def test_a_service_the_new_cluster_serves_replaces_the_kept_one_and_the_rest_stays() -> None:
    merged = keep_other_clusters(OLD, ups("new", svc("web", "10.0.0.1:1")))
    assert kept_services(merged) == ["api"]
    web = next(s for s in merged.services if s.name == "web")
    assert web.kept_from_cluster is None and len(web.replicas) == 1
    # the kept set carries over from one answer to the next (the edge merges with what it
    # serves), and ends when the new cluster serves the last one
    again = keep_other_clusters(merged, ups("new", svc("web", "10.0.0.1:1")))
    assert kept_services(again) == ["api"]
    done = keep_other_clusters(again, ups("new", svc("web", "10.0.0.1:1"), svc("api", "x:4")))
    assert kept_services(done) == []


def test_views_without_a_cluster_id_keep_nothing() -> None:
    assert keep_other_clusters(ups(None, svc("web", "a:1")), ups("new")) == ups("new")
    assert keep_other_clusters(None, ups("new")) == ups("new")
