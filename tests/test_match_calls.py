"""How many Node writes reach the Node webhooks, with and without matchConditions (`make bench-match`).

A seeded mix of a cluster's Node writes (tests/node_writes.py) is decided as kube-apiserver
decides it (tests/admission_match.py: rules.go, then matcher.go, the manifests' own CEL under
cel-python). Nothing that the webhooks judge may be filtered out; what they do not judge must be.
The mix here is shorter than the bench's 1,000 writes (cel-python costs ~20 ms an evaluation);
every kind of write is in it.
"""

from __future__ import annotations

from typing import Any

import pytest
from admission_match import (
    MUTATE_NODES,
    VALIDATE_NODES,
    VALIDATE_PODCIDRS,
    VALIDATING_NODE_HOOKS,
    Match,
    Outcome,
    node_outcomes,
    tally,
)
from node_writes import FLANNEL, KINDS, node_writes

Obj = dict[str, Any]


def _spec(obj: Obj | None, key: str, empty: Any) -> Any:
    return ((obj or {}).get("spec") or {}).get(key) or empty


def _flannel(obj: Obj | None) -> dict[str, str]:
    annotations = ((obj or {}).get("metadata") or {}).get("annotations") or {}
    return {k: v for k, v in annotations.items() if k.startswith(FLANNEL)}


def changes_what_validation_judges(o: Outcome) -> bool:
    w = o.write
    if w.operation != "UPDATE":
        return True
    new, old = w.validated, w.old_object
    return (_spec(new, "podCIDR", "") != _spec(old, "podCIDR", "")
            or _spec(new, "podCIDRs", []) != _spec(old, "podCIDRs", [])
            or _flannel(new) != _flannel(old))


@pytest.fixture(scope="module", params=[("kube-controller-manager", 260), ("flannel-guard", 260)],
                ids=lambda p: p[0])
def outcomes(request: pytest.FixtureRequest) -> list[Outcome]:
    allocator, n = request.param
    return node_outcomes(node_writes(n, seed=16, allocator=allocator))


def of(outcomes: list[Outcome], hook: str) -> list[Outcome]:
    return [o for o in outcomes if o.hook == hook]


def validation(outcomes: list[Outcome]) -> list[Outcome]:
    """Each write as Node validation sees it: the two validating Node webhooks taken together
    (identical rules, so ``without`` is the same for both; ``with_`` is called if either is)."""
    by_write: dict[int, list[Outcome]] = {}
    for o in outcomes:
        if o.hook in VALIDATING_NODE_HOOKS:
            by_write.setdefault(id(o.write), []).append(o)
    out = []
    for pair in by_write.values():
        a, b = pair
        assert a.without == b.without
        with_ = Match(rules=a.with_.rules, called=a.with_.called or b.with_.called,
                      errors=a.with_.errors + b.with_.errors)
        out.append(Outcome(a.write, "validation", a.without, with_))
    return out


def sets_or_changes_pod_cidrs(o: Outcome) -> bool:
    new, old = o.write.validated, o.write.old_object
    if o.write.operation == "CREATE":
        return bool(_spec(new, "podCIDR", "") or _spec(new, "podCIDRs", []))
    return (_spec(new, "podCIDR", "") != _spec(old, "podCIDR", "")
            or _spec(new, "podCIDRs", []) != _spec(old, "podCIDRs", []))


def test_the_mix_has_every_kind_of_write_a_cluster_makes(outcomes: list[Outcome]) -> None:
    kinds = {o.write.kind for o in outcomes}
    expected = set(KINDS)
    if outcomes[0].write.admitted is not None:
        expected.discard("pod-cidr")  # flannel-guard gives the podCIDR inside the CREATE
    assert expected <= kinds


def test_no_expression_errors_and_nothing_rejected(outcomes: list[Outcome]) -> None:
    for hook, counts in tally(outcomes).items():
        assert (counts["errors"], counts["rejected"]) == (0, 0), hook


def test_status_subresource_writes_are_never_sent_with_or_without_conditions(outcomes: list[Outcome]) -> None:
    # rules.go: a rule on "nodes" does not match the "status" subresource; flannel's own
    # annotation patches (pkg/subnet/kube/kube.go: Patch(..., "status")) are among these.
    status = [o for o in outcomes if o.write.subresource == "status"]
    assert {o.write.kind for o in status} >= {"status", "flannel-annotations"}
    assert not any(o.without.rules or o.with_.called for o in status)


def test_deletes_are_never_sent(outcomes: list[Outcome]) -> None:
    deletes = [o for o in outcomes if o.write.operation == "DELETE"]
    assert deletes and not any(o.without.called or o.with_.called for o in deletes)


def test_validation_is_called_for_every_write_that_changes_what_it_judges(outcomes: list[Outcome]) -> None:
    sent = [o for o in validation(outcomes) if o.without.called]
    judged = [o for o in sent if changes_what_validation_judges(o)]
    assert {o.write.kind for o in judged} >= {"register", "flannel-annotation-operator"}
    assert all(o.with_.called for o in judged), [o.write.kind for o in judged if not o.with_.called]
    if outcomes[0].write.admitted is None:
        assert any(o.write.kind == "pod-cidr" for o in judged)


def test_validation_skips_label_taint_cordon_and_other_annotation_updates(outcomes: list[Outcome]) -> None:
    sent = [o for o in validation(outcomes) if o.without.called]
    unjudged = [o for o in sent if not changes_what_validation_judges(o)]
    assert {o.write.kind for o in unjudged} >= {"label", "taint", "cordon", "annotation"}
    assert not any(o.with_.called for o in unjudged)


def test_pod_cidr_writes_and_only_they_reach_the_fail_closed_webhook(outcomes: list[Outcome]) -> None:
    # The podCIDR webhook is failurePolicy Fail: it must see every write that sets or changes a
    # podCIDR and nothing else (kubelet's registration never waits on flannel-guard); the Ignore
    # webhook sees the rest of what validation judges, and no write reaches both.
    fail = {id(o.write): o.with_.called for o in of(outcomes, VALIDATE_PODCIDRS) if o.without.called}
    rest = {id(o.write): o.with_.called for o in of(outcomes, VALIDATE_NODES) if o.without.called}
    sent = [o for o in validation(outcomes) if o.without.called]
    assert any(fail.values()) and any(rest.values())
    for o in sent:
        assert fail[id(o.write)] is sets_or_changes_pod_cidrs(o), o.write.kind
        assert not (fail[id(o.write)] and rest[id(o.write)]), o.write.kind
    registrations = [o for o in sent if o.write.kind == "register" and not sets_or_changes_pod_cidrs(o)]
    if outcomes[0].write.admitted is None:
        assert registrations and not any(fail[id(o.write)] for o in registrations)


def test_mutation_is_called_exactly_for_nodes_without_a_podcidr(outcomes: list[Outcome]) -> None:
    sent = [o for o in of(outcomes, MUTATE_NODES) if o.without.called]
    creates = [o for o in sent if o.write.operation == "CREATE"]
    assert creates and all(not _spec(o.write.object, "podCIDR", "") for o in creates)
    assert all(o.with_.called for o in creates)
    for o in sent:
        assert o.with_.called is (not _spec(o.write.object, "podCIDR", "")), o.write.kind
    assert not any(o.with_.called for o in sent
                   if o.write.kind in ("label", "taint", "cordon") and _spec(o.write.object, "podCIDR", ""))


def test_fewer_calls_with_match_conditions_for_each_node_webhook(outcomes: list[Outcome]) -> None:
    counts = tally(outcomes)
    for hook in (VALIDATE_NODES, VALIDATE_PODCIDRS, MUTATE_NODES):
        assert 0 < counts[hook]["with"] < counts[hook]["without"], (hook, counts[hook])


def test_the_mix_is_the_same_for_the_same_seed_and_has_exactly_n_writes() -> None:
    assert node_writes(120, seed=3) == node_writes(120, seed=3)
    assert node_writes(120, seed=3) != node_writes(120, seed=4)
    assert len(node_writes(1000)) == 1000
    with pytest.raises(ValueError, match="allocator"):
        node_writes(10, allocator="calico")
