"""Resolving a limit to hosts, and the overlap rule that serializes jobs (pure)."""

from __future__ import annotations

from orchestrify.jobs.hosts import EVERY_HOST, Inventory, overlaps

LISTING = {
    "_meta": {"hostvars": {"a": {}, "b": {}, "c": {}, "d": {}}},
    "all": {"children": ["ungrouped", "workers", "control"]},
    "workers": {"children": ["web", "batch"]},
    "web": {"hosts": ["a", "b"]},
    "batch": {"hosts": ["c"]},
    "control": {"hosts": ["d"]},
    "ungrouped": {},
}


def resolve(limit: str | None) -> set[str]:
    return set(Inventory.from_listing(LISTING).resolve(limit))


def test_groups_expand_through_children() -> None:
    assert resolve("workers") == {"a", "b", "c"}
    assert resolve("all") == {"a", "b", "c", "d"}


def test_union_intersection_and_exclusion_follow_ansible() -> None:
    assert resolve("a,d") == {"a", "d"}
    assert resolve("workers:!b") == {"a", "c"}
    assert resolve("workers:&web") == {"a", "b"}
    assert resolve("!workers") == {"d"}
    assert resolve("w*") == {"a", "b", "c"}
    assert resolve("web:&workers:!a") == {"b"}


def test_commas_win_over_colons_as_ansible_splits_them() -> None:
    # ansible-core reads "web:!b,c" as the two patterns "web:!b" (matching nothing) and "c".
    assert resolve("web:!b,c") == {"web:!b", "c"}


def test_unknown_names_stay_as_hosts_so_they_still_serialize() -> None:
    assert resolve("newhost") == {"newhost"}


def test_no_limit_or_ranges_mean_every_host() -> None:
    assert resolve(None) == {EVERY_HOST}
    assert resolve("a[1:3]") == {EVERY_HOST}


def test_overlap() -> None:
    assert overlaps({"a"}, {"a", "b"})
    assert not overlaps({"a"}, {"b"})
    assert overlaps({EVERY_HOST}, {"b"})
    assert overlaps(set(), {EVERY_HOST})
