"""Shared fixtures: databases (SQLite and PostgreSQL) and a real agentd on ephemeral ports."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import uuid

import grpc
import httpx
import pytest
import pytest_asyncio
from grpc_status import rpc_status
from hypothesis import HealthCheck, settings
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from agentd.app import Agentd
from agentd.config import Settings
from agentd.engine.runs import RESPONSES
from agentd.errors import details_of
from agentd.storage import Database, Repository
from agentd.storage.schema import metadata
from agentd.v1 import agents_pb2_grpc, models_pb2_grpc
from tests.fakes.openai_server import FakeOpenAIServer

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL",
                              "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", "postgres"]

# The fuzz tests (tests/fuzz) run in every `make test`: derandomized (the same examples on
# every run and machine, so a failure reproduces), no example database left behind, and
# bounded by each test's max_examples (tests/fuzz/strategies.py: budget).
settings.register_profile(
    "agentd", derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.load_profile("agentd")


def _run(coro) -> None:
    """Runs a coroutine to completion on a private loop in a thread: fixtures that prepare
    databases may be set up while a test's event loop is already running."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


async def _admin(sql: str) -> None:
    engine = create_async_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def database_refusing_connections(database_url: str):
    """A PostgreSQL outage as agentd sees one: its connections cut and new ones refused, until
    the block ends."""
    database = make_url(database_url).database
    await _admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
    try:
        await _admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     f"WHERE datname = '{database}' AND pid <> pg_backend_pid()")
        yield
    finally:
        await _admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')


async def once_ended(read, running, timeout_s: float = 10):
    """What `read()` (a resource with a status) answers once its status is no longer
    `running`, polled as a client would after a database outage: UNAVAILABLE (the pool's first
    call after it) is asked again."""
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                resource = await read()
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE
            else:
                if resource.status != running:
                    return resource
            await asyncio.sleep(0.2)


@contextlib.contextmanager
def _new_postgres_database():
    """The URL of a new, empty PostgreSQL database, dropped at exit."""
    name = f"agentd_test_{uuid.uuid4().hex[:12]}"
    try:
        _run(_admin(f'CREATE DATABASE "{name}"'))
    except Exception as e:  # noqa: BLE001 - reported as a failure with the reason
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is not usable: {e}. "
                    "Set TEST_POSTGRES_URL or start the server.")
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        _run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh PostgreSQL database for this test run, dropped at the end."""
    with _new_postgres_database() as url:
        yield url


@pytest.fixture(params=BACKENDS)
def empty_database_url(request, tmp_path):
    """A database with no schema at all (database_url's PostgreSQL one is migrated by the
    first test that uses it): for tests of migrations from an older revision."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    with _new_postgres_database() as url:
        yield url


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'agentd.db'}"
        return
    url = request.getfixturevalue("postgres_url")
    yield url
    # One database per run; empty it after each test so tests stay independent.
    async def truncate():
        engine = create_async_engine(url)
        async with engine.begin() as conn:
            tables = ", ".join(t.name for t in metadata.sorted_tables)
            await conn.execute(text(f"TRUNCATE {tables} CASCADE"))
        await engine.dispose()
    _run(truncate())


def make_settings(database_url: str, tmp_path, **overrides) -> Settings:
    # The embedded model stays off unless a test turns it on (tests/integration/test_local_model.py).
    values = dict(grpc_addr="127.0.0.1:0", http_addr="127.0.0.1:0", data_dir=tmp_path,
                  database_url=database_url, grace_period_s=0, local_model="off", providers=[
                      {"id": "fake", "type": "openai", "base_url": "http://127.0.0.1:9/v1",
                       "models": [{"id": "test-model"},
                                  {"id": "org/test-embed", "model_type": "embedding",
                                   "metadata": {"embedding_dimension": 384}}]}])
    values.update(overrides)
    return Settings.model_validate(values)


@pytest.fixture
def fake():
    """The scripted fake model server (a real HTTP server speaking chat completions)."""
    with FakeOpenAIServer() as server:
        yield server


def fake_model_providers(fake) -> list[dict]:
    """The `providers` setting of an agentd whose one model, test-model, is the fake server."""
    return [{"id": "fake", "type": "openai", "base_url": fake.base_url, "models": [{"id": "test-model"}]}]


@contextlib.asynccontextmanager
async def running(settings: Settings):
    """A started agentd (gRPC + gateway on ephemeral ports), stopped at the end."""
    server = Agentd(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def draining(server: Agentd):
    """The server in the midst of its shutdown (SIGTERM's stop()): it accepts no new run, its
    database is still open, and the drain waits for one run held open here until the
    block ends; then the stop finishes."""
    async def held(run) -> None:
        await asyncio.Event().wait()

    holder = ("drain-holder", "resp_drain_holder")
    server.runs.start(*holder, held, kind=RESPONSES)
    stopping = asyncio.create_task(server.stop(60))
    while server.runs.accepting:  # noqa: ASYNC110 - nothing signals that the drain began
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        await server.runs.cancel(*holder, "interrupted")
        await stopping


@contextlib.asynccontextmanager
async def running_with_agents(settings: Settings):
    """A started agentd and an AgentsService stub on its gRPC port; stopped at exit."""
    async with running(settings) as server, \
            grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield server, agents_pb2_grpc.AgentsServiceStub(channel)


@pytest_asyncio.fixture
async def agentd(database_url, tmp_path):
    """A running agentd (gRPC + gateway) on ephemeral ports."""
    server = Agentd(make_settings(database_url, tmp_path))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


@pytest_asyncio.fixture
async def channel(agentd):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{agentd.grpc_port}") as ch:
        yield ch


@pytest.fixture
def agents(channel):
    return agents_pb2_grpc.AgentsServiceStub(channel)


@pytest.fixture
def models(channel):
    return models_pb2_grpc.ModelsServiceStub(channel)


@pytest_asyncio.fixture
async def http(agentd):
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{agentd.http_port}") as client:
        yield client


@pytest_asyncio.fixture
async def repo(database_url):
    """A migrated database behind the generic repository, for store tests."""
    db = Database(database_url)
    await db.migrate()
    try:
        yield Repository(db)
    finally:
        await db.close()


async def error_of(call) -> tuple[grpc.StatusCode, str, list[str]]:
    """The code, ErrorInfo reason and BadRequest fields of a failed gRPC call."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    reason, fields = details_of(rpc_status.from_call(caught.value))
    return caught.value.code(), reason, fields
