"""Migrations that change what existing rows mean are tested on a database holding such rows."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from daygen.settings import Settings
from storage.migrate import migrate_to
from tests.conftest import private_database


def _rows(url: str, sql: str, *args) -> list[asyncpg.Record]:
    """Migrations run their own event loop, so this test runs outside one."""

    async def fetch() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(fetch())


def test_the_running_balances_migration_starts_each_account_at_the_sum_of_its_entries(server_urls):
    rich, poor = uuid.uuid4(), uuid.uuid4()
    add = (
        "INSERT INTO ledger_entries (account_id, kind, amount, job_id, idempotency_key) "
        "SELECT a, k, m, NULL, gen_random_uuid()::text FROM unnest($1::uuid[], $2::text[], $3::numeric[]) AS e(a, k, m)"
    )
    with private_database(server_urls[0], revision="0006") as url:
        _rows(
            url,
            add,
            [rich, rich, rich, poor, poor],
            ["grant", "reserve", "commit", "grant", "reserve"],
            [10, -4, 1, 2, -2],
        )
        migrate_to(Settings(database_url=url).database_url)
        balances = dict(_rows(url, "SELECT account_id, balance FROM ledger_balances"))
        assert balances == {rich: 7, poor: 0}

        _rows(url, add, [poor, rich], ["topup", "reserve"], ["2.5", -7])  # and from now on, as entries come
        balances = dict(_rows(url, "SELECT account_id, balance FROM ledger_balances"))
        assert balances == {rich: 0, poor: 2.5}
