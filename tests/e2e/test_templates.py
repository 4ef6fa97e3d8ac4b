"""Prompt templates: each user keeps their own, on /v1 and on the daygen frontend's /api."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import func, select

from storage.models import Template
from tests.e2e.helpers import assert_api_error, assert_v1_error, bearer, signup

TEMPLATE_FIELDS = {"id", "name", "modality", "category", "description", "prompt", "params", "createdAt", "updatedAt"}
PREFIXES = ("/v1/templates", "/api/templates")


async def new_user(client) -> tuple[dict[str, str], uuid.UUID]:
    body = await signup(client)
    return bearer(body["accessToken"]), uuid.UUID(body["user"]["id"])


async def create(client, headers, prefix: str = "/v1/templates", **fields) -> dict:
    body = {"name": "Portrait", "modality": "image", **fields}
    response = await client.post(prefix, json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def db_row(sessions, template_id: str | uuid.UUID) -> Template | None:
    async with sessions() as session:
        return await session.get(Template, uuid.UUID(str(template_id)))


def assert_error(prefix: str, response, status: int, code: str) -> None:
    if prefix.startswith("/api"):
        assert_api_error(response, status)
    else:
        assert_v1_error(response, status, code)


# -- create, read, update, delete -------------------------------------------------------------


async def test_creating_a_template_answers_201_with_every_field(client):
    headers, _ = await new_user(client)
    params = {"size": "1024x1024", "steps": 30, "style": {"palette": ["teal", "gold"], "grain": 0.2}}
    response = await client.post(
        "/v1/templates",
        json={
            "name": "Moody portrait",
            "modality": "image",
            "category": "portraits",
            "description": "Low-key lighting, film grain.",
            "prompt": "a portrait of {subject}, low-key lighting",
            "params": params,
        },
        headers=headers,
    )
    assert response.status_code == 201, response.text
    template = response.json()
    assert set(template) == TEMPLATE_FIELDS
    uuid.UUID(template["id"])
    assert template["name"] == "Moody portrait"
    assert template["modality"] == "image"
    assert template["category"] == "portraits"
    assert template["description"] == "Low-key lighting, film grain."
    assert template["prompt"] == "a portrait of {subject}, low-key lighting"
    assert template["params"] == params
    assert datetime.fromisoformat(template["createdAt"]).tzinfo is not None
    assert datetime.fromisoformat(template["updatedAt"]).tzinfo is not None


async def test_only_name_and_modality_are_needed_and_the_rest_stay_empty(client):
    headers, _ = await new_user(client)
    template = await create(client, headers, name="  Bare  ", modality=" video ")
    assert template["name"] == "Bare"
    assert template["modality"] == "video"
    assert template["category"] is None
    assert template["description"] is None
    assert template["prompt"] is None
    assert template["params"] is None


async def test_a_created_template_can_be_fetched_by_its_owner(client):
    headers, _ = await new_user(client)
    for prefix in PREFIXES:
        created = await create(client, headers, prefix, prompt="a fox", params={"seed": 7})
        fetched = await client.get(f"{prefix}/{created['id']}", headers=headers)
        assert fetched.status_code == 200, fetched.text
        assert fetched.json() == created


async def test_templates_made_on_either_api_show_up_on_the_other(client):
    headers, _ = await new_user(client)
    on_v1 = await create(client, headers, "/v1/templates", name="from v1")
    on_api = await create(client, headers, "/api/templates", name="from api")
    assert (await client.get(f"/api/templates/{on_v1['id']}", headers=headers)).json() == on_v1
    assert (await client.get(f"/v1/templates/{on_api['id']}", headers=headers)).json() == on_api


async def test_patch_changes_only_the_fields_sent(client):
    headers, _ = await new_user(client)
    created = await create(client, headers, category="portraits", prompt="a fox", params={"steps": 30})
    response = await client.patch(f"/v1/templates/{created['id']}", json={"name": "Renamed"}, headers=headers)
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["name"] == "Renamed"
    assert updated["modality"] == created["modality"]
    assert updated["category"] == "portraits"
    assert updated["prompt"] == "a fox"
    assert updated["params"] == {"steps": 30}
    assert updated["createdAt"] == created["createdAt"]
    assert datetime.fromisoformat(updated["updatedAt"]) >= datetime.fromisoformat(created["updatedAt"])
    fetched = await client.get(f"/v1/templates/{created['id']}", headers=headers)
    assert fetched.json() == updated


async def test_patch_can_clear_optional_fields_with_null(client):
    headers, _ = await new_user(client)
    created = await create(client, headers, category="portraits", description="d", prompt="p", params={"a": 1})
    response = await client.patch(
        f"/v1/templates/{created['id']}",
        json={"category": None, "description": None, "prompt": None, "params": None},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    cleared = response.json()
    assert (cleared["category"], cleared["description"], cleared["prompt"], cleared["params"]) == (
        None,
        None,
        None,
        None,
    )
    assert cleared["name"] == created["name"]


async def test_patch_replaces_params_as_a_whole(client):
    headers, _ = await new_user(client)
    created = await create(client, headers, params={"steps": 30, "seed": 1})
    response = await client.patch(f"/v1/templates/{created['id']}", json={"params": {"steps": 50}}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["params"] == {"steps": 50}


async def test_an_empty_patch_changes_nothing(client):
    headers, _ = await new_user(client)
    created = await create(client, headers, prompt="keep me")
    response = await client.patch(f"/v1/templates/{created['id']}", json={}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json() == created


async def test_api_updates_with_patch_or_put(client):
    headers, _ = await new_user(client)
    created = await create(client, headers, "/api/templates", prompt="a fox")
    patched = await client.patch(f"/api/templates/{created['id']}", json={"name": "Patched"}, headers=headers)
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == "Patched"
    assert patched.json()["prompt"] == "a fox"
    put = await client.put(
        f"/api/templates/{created['id']}", json={"name": "Put", "modality": "video"}, headers=headers
    )
    assert put.status_code == 200, put.text
    assert put.json()["name"] == "Put"
    assert put.json()["modality"] == "video"
    assert put.json()["prompt"] == "a fox"
    fetched = await client.get(f"/api/templates/{created['id']}", headers=headers)
    assert fetched.json() == put.json()


async def test_v1_has_no_put(client):
    headers, _ = await new_user(client)
    created = await create(client, headers)
    response = await client.put(f"/v1/templates/{created['id']}", json={"name": "x"}, headers=headers)
    assert_v1_error(response, 405, "method_not_allowed")


async def test_deleting_a_template_answers_204_and_it_is_gone(client, sessions):
    headers, _ = await new_user(client)
    for prefix in PREFIXES:
        created = await create(client, headers, prefix)
        response = await client.delete(f"{prefix}/{created['id']}", headers=headers)
        assert response.status_code == 204, response.text
        assert response.content == b""
        assert_error(prefix, await client.get(f"{prefix}/{created['id']}", headers=headers), 404, "not_found")
        assert_error(prefix, await client.delete(f"{prefix}/{created['id']}", headers=headers), 404, "not_found")
        assert await db_row(sessions, created["id"]) is None


async def test_an_unknown_template_id_is_404_everywhere(client):
    headers, _ = await new_user(client)
    missing = uuid.uuid4()
    for prefix in PREFIXES:
        url = f"{prefix}/{missing}"
        assert_error(prefix, await client.get(url, headers=headers), 404, "not_found")
        assert_error(prefix, await client.patch(url, json={"name": "x"}, headers=headers), 404, "not_found")
        assert_error(prefix, await client.patch(url, json={}, headers=headers), 404, "not_found")
        assert_error(prefix, await client.delete(url, headers=headers), 404, "not_found")
    assert_api_error(await client.put(f"/api/templates/{missing}", json={"name": "x"}, headers=headers), 404)


async def test_a_template_id_that_is_not_a_uuid_is_422(client):
    headers, _ = await new_user(client)
    error = assert_v1_error(await client.get("/v1/templates/not-a-uuid", headers=headers), 422, "validation_error")
    assert "template_id" in error["message"]
    assert_api_error(await client.get("/api/templates/not-a-uuid", headers=headers), 422)


# -- listing and pagination -------------------------------------------------------------------


async def test_the_list_shows_only_my_templates_newest_first(client):
    mine, _ = await new_user(client)
    theirs, _ = await new_user(client)
    names = [f"mine {i}" for i in range(3)]
    for name in names:
        await create(client, mine, name=name)
    await create(client, theirs, name="theirs")

    page = await client.get("/v1/templates", headers=mine)
    assert page.status_code == 200, page.text
    assert set(page.json()) == {"items", "nextCursor"}
    assert [t["name"] for t in page.json()["items"]] == list(reversed(names))
    assert page.json()["nextCursor"] is None
    for item in page.json()["items"]:
        assert set(item) == TEMPLATE_FIELDS

    api_page = await client.get("/api/templates", headers=mine)
    assert api_page.status_code == 200, api_page.text
    assert set(api_page.json()) == {"templates", "nextCursor", "hasNextPage"}
    assert api_page.json()["templates"] == page.json()["items"]
    assert api_page.json()["nextCursor"] is None
    assert api_page.json()["hasNextPage"] is False

    their_page = (await client.get("/v1/templates", headers=theirs)).json()
    assert [t["name"] for t in their_page["items"]] == ["theirs"]


async def test_a_new_user_has_an_empty_list(client):
    headers, _ = await new_user(client)
    assert (await client.get("/v1/templates", headers=headers)).json() == {"items": [], "nextCursor": None}
    assert (await client.get("/api/templates", headers=headers)).json() == {
        "templates": [],
        "nextCursor": None,
        "hasNextPage": False,
    }


async def test_paging_through_the_list_with_a_cursor_sees_each_template_once_in_order(client):
    headers, _ = await new_user(client)
    created = [await create(client, headers, name=f"t{i}") for i in range(5)]
    expected = [t["id"] for t in reversed(created)]

    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        response = await client.get("/v1/templates", params=params, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 2
        seen += [t["id"] for t in page["items"]]
        pages += 1
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == expected
    assert pages == 3


async def test_api_paging_says_whether_there_is_a_next_page(client):
    headers, _ = await new_user(client)
    created = [await create(client, headers, "/api/templates", name=f"t{i}") for i in range(3)]
    expected = [t["id"] for t in reversed(created)]

    first = (await client.get("/api/templates", params={"limit": 2}, headers=headers)).json()
    assert [t["id"] for t in first["templates"]] == expected[:2]
    assert first["hasNextPage"] is True
    assert first["nextCursor"] == expected[1]

    second = (
        await client.get("/api/templates", params={"limit": 2, "cursor": first["nextCursor"]}, headers=headers)
    ).json()
    assert [t["id"] for t in second["templates"]] == expected[2:]
    assert second["hasNextPage"] is False
    assert second["nextCursor"] is None


async def test_a_list_that_fills_its_last_page_exactly_has_no_dangling_cursor(client):
    headers, _ = await new_user(client)
    for i in range(4):
        await create(client, headers, name=f"t{i}")
    first = (await client.get("/v1/templates", params={"limit": 2}, headers=headers)).json()
    assert first["nextCursor"] is not None
    second = (
        await client.get("/v1/templates", params={"limit": 2, "cursor": first["nextCursor"]}, headers=headers)
    ).json()
    assert len(second["items"]) == 2
    assert second["nextCursor"] is None


async def test_the_list_shows_twenty_by_default_and_at_most_a_hundred(client):
    headers, _ = await new_user(client)
    for i in range(21):
        await create(client, headers, name=f"t{i}")
    default = (await client.get("/v1/templates", headers=headers)).json()
    assert len(default["items"]) == 20
    assert default["nextCursor"] is not None
    everything = (await client.get("/v1/templates", params={"limit": 100}, headers=headers)).json()
    assert len(everything["items"]) == 21
    assert everything["nextCursor"] is None
    one = (await client.get("/v1/templates", params={"limit": 1}, headers=headers)).json()
    assert [t["name"] for t in one["items"]] == ["t20"]


async def test_a_cursor_that_is_not_a_uuid_is_422(client):
    headers, _ = await new_user(client)
    response = await client.get("/v1/templates", params={"cursor": "not-a-uuid"}, headers=headers)
    error = assert_v1_error(response, 422, "validation_error")
    assert [d["field"] for d in error["details"]] == ["query.cursor"]
    assert_api_error(await client.get("/api/templates", params={"cursor": "garbage"}, headers=headers), 422)


async def test_a_limit_out_of_range_is_422(client):
    headers, _ = await new_user(client)
    for limit in ("0", "-1", "101", "1000", "ten", "1.5"):
        for prefix in PREFIXES:
            response = await client.get(prefix, params={"limit": limit}, headers=headers)
            assert_error(prefix, response, 422, "validation_error")


# -- ownership ----------------------------------------------------------------------------------


async def test_another_users_template_is_404_and_left_untouched(client, sessions):
    owner, owner_id = await new_user(client)
    intruder, _ = await new_user(client)
    for prefix in PREFIXES:
        created = await create(
            client, owner, prefix, name="Private", category="secret", prompt="mine", params={"seed": 1}
        )
        url = f"{prefix}/{created['id']}"
        assert_error(prefix, await client.get(url, headers=intruder), 404, "not_found")
        patch = {"name": "Hijacked", "prompt": "theirs", "params": {"seed": 2}}
        assert_error(prefix, await client.patch(url, json=patch, headers=intruder), 404, "not_found")
        assert_error(prefix, await client.patch(url, json={}, headers=intruder), 404, "not_found")
        if prefix.startswith("/api"):
            assert_api_error(await client.put(url, json=patch, headers=intruder), 404)
        assert_error(prefix, await client.delete(url, headers=intruder), 404, "not_found")

        row = await db_row(sessions, created["id"])
        assert row is not None
        assert row.owner_id == owner_id
        assert (row.name, row.modality, row.category, row.prompt, row.params) == (
            "Private",
            "image",
            "secret",
            "mine",
            {"seed": 1},
        )
        assert row.updated_at == datetime.fromisoformat(created["updatedAt"])
        still_mine = await client.get(url, headers=owner)
        assert still_mine.json() == created


async def test_the_404_for_someone_elses_template_reads_like_one_that_never_existed(client):
    owner, _ = await new_user(client)
    intruder, _ = await new_user(client)
    created = await create(client, owner)
    theirs = await client.get(f"/v1/templates/{created['id']}", headers=intruder)
    nowhere = await client.get(f"/v1/templates/{uuid.uuid4()}", headers=intruder)
    assert theirs.status_code == nowhere.status_code == 404
    assert theirs.json() == nowhere.json()


async def test_v1_refuses_a_body_that_names_an_owner(client, sessions):
    headers, _ = await new_user(client)
    _, other_id = await new_user(client)
    for field in ("ownerId", "ownerAuthId"):
        body = {"name": "Sneaky", "modality": "image", field: str(other_id)}
        error = assert_v1_error(await client.post("/v1/templates", json=body, headers=headers), 422, "validation_error")
        assert [d["field"] for d in error["details"]] == [field]
    created = await create(client, headers)
    for field in ("ownerId", "ownerAuthId"):
        response = await client.patch(f"/v1/templates/{created['id']}", json={field: str(other_id)}, headers=headers)
        assert_v1_error(response, 422, "validation_error")
    async with sessions() as session:
        count = await session.execute(select(func.count()).select_from(Template).where(Template.owner_id == other_id))
    assert count.scalar_one() == 0


async def test_api_ignores_owner_fields_and_the_template_belongs_to_the_token_user(client, sessions):
    headers, my_id = await new_user(client)
    other, other_id = await new_user(client)
    response = await client.post(
        "/api/templates",
        json={
            "name": "Mine",
            "modality": "image",
            "ownerId": str(other_id),
            "ownerAuthId": str(other_id),
            "isPublic": True,
        },
        headers=headers,
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert set(created) == TEMPLATE_FIELDS

    assert (await db_row(sessions, created["id"])).owner_id == my_id
    assert [t["id"] for t in (await client.get("/api/templates", headers=headers)).json()["templates"]] == [
        created["id"]
    ]
    assert (await client.get("/api/templates", headers=other)).json()["templates"] == []
    assert (await client.get(f"/api/templates/{created['id']}", headers=other)).status_code == 404

    for method in ("PATCH", "PUT"):
        moved = await client.request(
            method,
            f"/api/templates/{created['id']}",
            json={"name": f"Still mine ({method})", "ownerId": str(other_id), "ownerAuthId": str(other_id)},
            headers=headers,
        )
        assert moved.status_code == 200, moved.text
        assert moved.json()["name"] == f"Still mine ({method})"
        assert (await db_row(sessions, created["id"])).owner_id == my_id
    assert (await client.get("/api/templates", headers=other)).json()["templates"] == []


# -- authentication -----------------------------------------------------------------------------


async def test_every_template_route_needs_a_token(client):
    owner, _ = await new_user(client)
    created = await create(client, owner)
    for prefix in PREFIXES:
        item = f"{prefix}/{created['id']}"
        calls = [
            client.get(prefix),
            client.post(prefix, json={"name": "x", "modality": "image"}),
            client.get(item),
            client.patch(item, json={"name": "x"}),
            client.delete(item),
        ]
        if prefix.startswith("/api"):
            calls.append(client.put(item, json={"name": "x"}))
        for call in calls:
            response = await call
            assert_error(prefix, response, 401, "not_authenticated")
            assert response.headers["www-authenticate"].lower().startswith("bearer")
        bad = await client.get(prefix, headers={"Authorization": "Bearer not.a.token"})
        assert_error(prefix, bad, 401, "not_authenticated")
    assert (await client.get(f"/v1/templates/{created['id']}", headers=owner)).json() == created


# -- validation ---------------------------------------------------------------------------------


async def test_name_or_modality_null_on_update_is_422_and_nothing_changes(client, sessions):
    headers, _ = await new_user(client)
    for prefix in PREFIXES:
        created = await create(client, headers, prefix)
        for body in ({"name": None}, {"modality": None}, {"name": None, "prompt": "new"}):
            response = await client.patch(f"{prefix}/{created['id']}", json=body, headers=headers)
            assert_error(prefix, response, 422, "validation_error")
        row = await db_row(sessions, created["id"])
        assert (row.name, row.modality, row.prompt) == ("Portrait", "image", None)
    created = await create(client, headers, "/api/templates")
    assert_api_error(await client.put(f"/api/templates/{created['id']}", json={"name": None}, headers=headers), 422)


async def test_creating_without_a_name_or_modality_is_422_naming_the_field(client):
    headers, _ = await new_user(client)
    for body, field in (
        ({"modality": "image"}, "name"),
        ({"name": "x"}, "modality"),
        ({"name": "   ", "modality": "image"}, "name"),
        ({"name": "x", "modality": ""}, "modality"),
        ({"name": None, "modality": "image"}, "name"),
    ):
        error = assert_v1_error(await client.post("/v1/templates", json=body, headers=headers), 422, "validation_error")
        assert [d["field"] for d in error["details"]] == [field]
        assert_api_error(await client.post("/api/templates", json=body, headers=headers), 422)


async def test_wrong_types_and_oversized_fields_are_422(client):
    headers, _ = await new_user(client)
    for body in (
        {"name": 5, "modality": "image"},
        {"name": "x", "modality": "image", "params": ["not", "an", "object"]},
        {"name": "x", "modality": "image", "params": "steps=30"},
        {"name": "x", "modality": "image", "category": 3},
        {"name": "x" * 201, "modality": "image"},
        {"name": "x", "modality": "image", "prompt": "x" * 10_001},
    ):
        assert_v1_error(await client.post("/v1/templates", json=body, headers=headers), 422, "validation_error")


async def test_text_or_numbers_the_database_cannot_store_are_422_not_500(client, sessions):
    headers, _ = await new_user(client)
    created = await create(client, headers, params={"steps": 30})
    for changes in (
        {"name": "Por\u0000trait"},
        {"prompt": "a fox\u0000"},
        {"category": "\u0000"},
        {"params": {"negative": "blur\u0000"}},
        {"params": {"bad\u0000key": 1}},
        {"params": {"nested": [{"deep": ["\u0000"]}]}},
    ):
        body = {"name": "x", "modality": "image", **changes}
        for prefix in PREFIXES:
            response = await client.post(prefix, json=body, headers=headers)
            assert_error(prefix, response, 422, "validation_error")
            response = await client.patch(f"{prefix}/{created['id']}", json=changes, headers=headers)
            assert_error(prefix, response, 422, "validation_error")
    for number in (b"NaN", b"Infinity", b"-Infinity"):
        raw = b'{"name": "x", "modality": "image", "params": {"cfg": [1, %s]}}' % number
        for prefix in PREFIXES:
            response = await client.post(prefix, content=raw, headers={**headers, "Content-Type": "application/json"})
            assert_error(prefix, response, 422, "validation_error")
    row = await db_row(sessions, created["id"])
    assert (row.name, row.prompt, row.params) == ("Portrait", None, {"steps": 30})


async def test_params_keep_any_json_a_frontend_sends(client):
    headers, _ = await new_user(client)
    params = {
        "big": 12345678901234567890,
        "ratio": 0.5,
        "flags": [True, False, None],
        "emoji": "🦊 ünïcode",
        "nested": {"a": {"b": {"c": []}}},
    }
    created = await create(client, headers, params=params)
    assert created["params"] == params
    assert (await client.get(f"/v1/templates/{created['id']}", headers=headers)).json()["params"] == params


async def test_an_unknown_field_on_v1_is_422(client):
    headers, _ = await new_user(client)
    body = {"name": "x", "modality": "image", "isPublic": True}
    error = assert_v1_error(await client.post("/v1/templates", json=body, headers=headers), 422, "validation_error")
    assert [d["field"] for d in error["details"]] == ["isPublic"]


async def test_template_bodies_must_be_json(client):
    headers, _ = await new_user(client)
    created = await create(client, headers)
    text = await client.post(
        "/v1/templates", content='{"name": "x", "modality": "image"}', headers={**headers, "Content-Type": "text/plain"}
    )
    assert_v1_error(text, 415, "unsupported_media_type")
    broken = await client.patch(
        f"/v1/templates/{created['id']}", content=b'{"name": ', headers={**headers, "Content-Type": "application/json"}
    )
    assert_v1_error(broken, 400, "malformed_body")
    api_text = await client.put(
        f"/api/templates/{created['id']}", content="name=x", headers={**headers, "Content-Type": "text/plain"}
    )
    assert_api_error(api_text, 415)


async def test_a_template_body_over_one_megabyte_is_413(client):
    headers, _ = await new_user(client)
    body = {"name": "x", "modality": "image", "params": {"blob": "x" * 1_100_000}}
    assert_v1_error(await client.post("/v1/templates", json=body, headers=headers), 413, "payload_too_large")
    assert_api_error(await client.post("/api/templates", json=body, headers=headers), 413)
