import pytest

import config
from smartflow_streams.catalog import BUILTIN_SERVICES, RouteRegistry, ServiceRoute, registry
from smartflow_streams.core.errors import RouteConflictError, RouteError, RouteNotRegisteredError


def test_builtin_routes_match_upstream_table() -> None:
    r = registry.service_route("active-scheduler")
    assert r == ServiceRoute(
        "active-scheduler", "active_scheduler_outbox_messages", "smartflow.active-scheduler.outbox",
        "smartflow-active-scheduler-outbox-consumer",
    )
    assert registry.service_route("token-store").table == "token_store_outbox_messages"
    assert len(BUILTIN_SERVICES) == 8


def test_event_owner_and_unregistered() -> None:
    assert registry.event_route("notification.feishu.requested").topic == "smartflow.notification.outbox"
    assert registry.owner_of("credit.charge.requested") == "token-store"
    with pytest.raises(RouteNotRegisteredError, match="outbox route not registered: eventType=nope"):
        registry.event_route("nope")


def test_registration_idempotent_and_conflict() -> None:
    reg = RouteRegistry(config.load_settings())
    reg.register_event("x.happened", "billing")
    reg.register_event("x.happened", "billing")
    with pytest.raises(RouteConflictError, match="already registered to service billing"):
        reg.register_event("x.happened", "agent")
    with pytest.raises(RouteError):
        reg.register_event("", "agent")
    with pytest.raises(RouteError):
        reg.register_event("y", "  ")
    assert reg.event_route("x.happened") == ServiceRoute(
        "billing", "billing_outbox_messages", "smartflow.billing.outbox", "smartflow-billing-outbox-consumer"
    )
    assert "billing" in reg.services()


def test_resolution_order_explicit_then_override_then_convention() -> None:
    settings = config.load_settings(services={"active_scheduler": {"topic": "custom.as", "table": "as_outbox"}})
    reg = RouteRegistry(settings)
    route = reg.service_route("active-scheduler")
    assert (route.topic, route.table, route.group_id) == (
        "custom.as", "as_outbox", "smartflow-active-scheduler-outbox-consumer")
    reg.register_route(ServiceRoute("active-scheduler", "t2", "topic2", "g2"))
    assert reg.service_route("active-scheduler").table == "t2"
    assert reg.service_route("").service_name == "agent"  # historical single-table mode


def test_override_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTFLOW_SERVICES__NOTIFICATION__GROUP_ID", "grp-x")
    reg = RouteRegistry(config.load_settings())
    assert reg.service_route("notification").group_id == "grp-x"


def test_bad_table_override_is_rejected() -> None:
    reg = RouteRegistry(config.load_settings(services={"task": {"table": "x; drop table y"}}))
    with pytest.raises(RouteError, match="invalid table override"):
        reg.service_route("task")


@pytest.mark.parametrize("table", ["task_outbox\n", "task_outbox\nunion", "1task", "a" * 65])
def test_table_names_must_match_in_full(table: str) -> None:
    reg = RouteRegistry(config.load_settings(services={"task": {"table": table}}))
    with pytest.raises(RouteError, match="invalid table override"):
        reg.service_route("task")
    with pytest.raises(RouteError, match="invalid table name"):
        reg.register_route(ServiceRoute("custom", table, "t", "g"))


def test_id_filter_quotes_the_table_name() -> None:
    """A table name that is a reserved word still gives valid SQL: the id filter is rendered by SQLAlchemy."""
    import sqlalchemy as sa
    from sqlalchemy.dialects import mysql, sqlite

    from smartflow_streams.db.models import outbox_table
    from smartflow_streams.outbox.repository import _id_in

    table = outbox_table("select")
    rendered = {"render_postcompile": True}  # the ids are rendered at execution time
    assert "`select`.id IN (1, 2)" in str(sa.select(table.c.id).where(_id_in(table, [1, 2])).compile(
        dialect=mysql.dialect(), compile_kwargs=rendered))
    assert '"select".id NOT IN (3)' in str(sa.delete(table).where(_id_in(table, [3], negate=True)).compile(
        dialect=sqlite.dialect(), compile_kwargs=rendered))
