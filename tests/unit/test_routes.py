"""What every route of the API shares."""

import importlib
import inspect
import pkgutil

from fastapi import APIRouter
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, APIWebSocketRoute

import serve_app.routes


def _plain_functions(dependant: Dependant) -> list[str]:
    """The handler and dependencies FastAPI would run in a worker thread: plain (not async) functions."""
    found = []
    call = dependant.call
    if call is not None and not (inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)):
        found.append(call.__qualname__)
    for sub in dependant.dependencies:
        found += _plain_functions(sub)
    return found


def test_no_route_runs_its_handler_or_a_dependency_in_a_worker_thread():
    # A plain function there costs every request a hop to a thread and back (and, with 1,000
    # sockets open, anyio's walk through every task on the loop first): seen in the replica's profile.
    modules = [
        importlib.import_module(m.name) for m in pkgutil.iter_modules(serve_app.routes.__path__, "serve_app.routes.")
    ]
    routers = [router for module in modules for router in vars(module).values() if isinstance(router, APIRouter)]
    routes = [route for router in routers for route in router.routes if isinstance(route, APIRoute | APIWebSocketRoute)]
    assert len(routes) > 40, "every router was found"
    threaded = {route.path: plain for route in routes if (plain := _plain_functions(route.dependant))}
    assert threaded == {}
