"""A PostgreSQL database of its own for a test module, on the test server."""

from __future__ import annotations

import asyncpg


async def create_database(dsn: str, name: str) -> None:
    """Create database `name` on the server `dsn` points at (a maintenance database)."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
