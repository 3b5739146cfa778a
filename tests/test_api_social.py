"""Categories, follows and the admin CLI over real HTTP and a real process, on SQLite and PostgreSQL."""
from __future__ import annotations

import asyncio
import sys

import pytest

from sfstream.api.security import verify_password
from sfstream.store import open_store


SEEDED = {"Just Chatting", "Gaming", "Music", "Art", "Science & Technology"}
PUBLIC_USER_KEYS = {"id", "username", "avatar", "bio", "followers_count", "created_at"}


# ---------------------------------------------------------------- categories


async def test_list_and_get_categories(api):
    status, body, _ = await api.call("GET", "/categories")
    assert status == 200
    assert (body["total"], body["limit"], body["offset"]) == (5, 20, 0)
    assert {c["name"] for c in body["items"]} == SEEDED
    # No live streams: all at 0 viewers, so by name.
    assert [c["name"] for c in body["items"]] == sorted(SEEDED, key=str.lower)
    first = body["items"][0]
    assert set(first) == {"id", "name", "description", "thumbnail", "viewers_count", "created_at", "updated_at"}
    assert first["viewers_count"] == 0 and first["thumbnail"] is None

    status, page, _ = await api.call("GET", "/v1/categories?limit=2&offset=3")
    assert status == 200 and (page["total"], page["limit"], page["offset"]) == (5, 2, 3)
    assert page["items"] == body["items"][3:5]

    status, one, _ = await api.call("GET", f"/categories/{first['id']}")
    assert status == 200 and one == first
    for path in ("/categories/999999", "/categories/abc", "/categories/-1", "/categories/" + "9" * 30):
        status, err, _ = await api.call("GET", path)
        assert status == 404 and err["error"]["code"] == "not_found", path


@pytest.mark.parametrize("query, field", [
    ("limit=0", "limit"), ("limit=101", "limit"), ("limit=ten", "limit"), ("limit=1.5", "limit"),
    ("offset=-1", "offset"), ("offset=100001", "offset"), ("offset=99999999999999999999999", "offset"),
    ("sort=name", "sort"),
])
async def test_bad_pagination_is_422(api, query, field):
    for path in ("/categories", "/users/nobody/followers"):
        status, body, _ = await api.call("GET", f"{path}?{query}")
        assert status == 422 and field in body["error"]["fields"], (path, body)


async def test_only_admins_change_categories(api):
    admin = (await api.register("alice"))["access_token"]  # the first account is an administrator
    user = (await api.register("bob"))["access_token"]
    new = {"name": "Cooking", "description": "Food, live."}

    status, _, resp = await api.call("POST", "/categories", json=new)
    assert status == 401 and "Bearer" in resp.headers["WWW-Authenticate"]
    status, body, _ = await api.call("POST", "/categories", json=new, token=user)
    assert status == 403 and body["error"]["code"] == "forbidden"

    status, cooking, _ = await api.call("POST", "/categories", json=new, token=admin)
    assert status == 201 and (cooking["name"], cooking["description"], cooking["viewers_count"]) == (
        "Cooking", "Food, live.", 0)
    status, body, _ = await api.call("POST", "/categories", json={"name": "COOKING"}, token=admin)
    assert status == 409 and "name" in body["error"]["fields"]
    status, listed, _ = await api.call("GET", "/categories")
    assert listed["total"] == 6 and "Cooking" in {c["name"] for c in listed["items"]}

    path = f"/categories/{cooking['id']}"
    status, _, _ = await api.call("PUT", path, json={"name": "Baking"}, token=user)
    assert status == 403
    status, body, _ = await api.call("PUT", path, json={"name": "Cooking & Baking"}, token=admin)
    assert status == 200 and (body["name"], body["description"]) == ("Cooking & Baking", "Food, live.")
    status, body, _ = await api.call("PUT", path, json={"name": "gaming"}, token=admin)
    assert status == 409 and "name" in body["error"]["fields"]
    status, body, _ = await api.call("PUT", "/categories/999999", json={"name": "Other"}, token=admin)
    assert status == 404

    status, _, _ = await api.call("DELETE", path, token=user)
    assert status == 403
    status, body, _ = await api.call("DELETE", path, token=admin)
    assert status == 200 and body == {"status": "deleted"}
    status, _, _ = await api.call("DELETE", path, token=admin)
    assert status == 404
    status, _, _ = await api.call("GET", path)
    assert status == 404


@pytest.mark.parametrize("payload, field", [
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": " Gaming"}, "name"),  # would pass for a duplicate of "Gaming"
    ({"name": "Tab\there"}, "name"),
    ({"name": "x" * 65}, "name"),
    ({"name": "Ok", "description": "nul\x00"}, "description"),
    ({"name": "Ok", "thumbnail": "x.jpg"}, "thumbnail"),  # unknown fields are refused
])
async def test_category_validation_names_the_field(api, payload, field):
    admin = (await api.register("alice"))["access_token"]
    status, body, _ = await api.call("POST", "/categories", json=payload, token=admin)
    assert status == 422 and field in body["error"]["fields"], body


# ---------------------------------------------------------------- follows


async def test_follow_unfollow_and_lists(api):
    alice = (await api.register("alice"))["access_token"]
    await api.register("bob")
    carol = (await api.register("carol"))["access_token"]

    status, body, _ = await api.call("POST", "/users/bob/follow", token=alice)
    assert status == 200 and body["following"] is True
    assert set(body["user"]) == PUBLIC_USER_KEYS and body["user"]["followers_count"] == 1
    status, body, _ = await api.call("POST", "/users/BOB/follow", token=alice)  # again: counted once
    assert status == 200 and body["user"]["followers_count"] == 1
    status, body, _ = await api.call("POST", "/v1/users/bob/follow", token=carol)
    assert status == 200 and body["user"]["followers_count"] == 2

    status, body, _ = await api.call("GET", "/users/bob/followers")
    assert status == 200 and (body["total"], body["limit"], body["offset"]) == (2, 20, 0)
    assert [item["user"]["username"] for item in body["items"]] == ["carol", "alice"]  # newest first
    assert all(set(item) == {"user", "followed_at"} and set(item["user"]) == PUBLIC_USER_KEYS
               for item in body["items"])
    status, body, _ = await api.call("GET", "/users/bob/followers?limit=1&offset=1")
    assert [item["user"]["username"] for item in body["items"]] == ["alice"] and body["total"] == 2
    status, body, _ = await api.call("GET", "/users/alice/following")
    assert [(i["user"]["username"], i["user"]["followers_count"]) for i in body["items"]] == [("bob", 2)]
    status, body, _ = await api.call("GET", "/users/bob/following")
    assert (body["items"], body["total"]) == ([], 0)

    status, body, _ = await api.call("GET", "/users/bob/follow", token=alice)
    assert status == 200 and body["following"] is True
    status, body, _ = await api.call("GET", "/users/carol/follow", token=alice)
    assert status == 200 and body["following"] is False

    status, body, _ = await api.call("DELETE", "/users/bob/follow", token=alice)
    assert status == 200 and body["following"] is False and body["user"]["followers_count"] == 1
    status, body, _ = await api.call("DELETE", "/users/bob/follow", token=alice)  # again: no drift
    assert status == 200 and body["user"]["followers_count"] == 1
    status, body, _ = await api.call("GET", "/users/bob")
    assert body["followers_count"] == 1


async def test_follow_refusals(api):
    alice = (await api.register("alice"))["access_token"]
    for method in ("POST", "DELETE", "GET"):
        status, body, _ = await api.call(method, "/users/alice/follow", token=alice)
        assert status == 422 and body["error"]["code"] == "cannot_follow_self" and "username" in body["error"]["fields"]
        status, body, _ = await api.call(method, "/users/nobody/follow", token=alice)
        assert status == 404 and body["error"]["code"] == "not_found"
        status, body, _ = await api.call(method, "/users/alice/follow")
        assert status == 401
    for path in ("/users/nobody/followers", "/users/nobody/following"):
        status, body, _ = await api.call("GET", path)
        assert status == 404 and body["error"]["code"] == "not_found"
    status, body, _ = await api.call("GET", "/users/alice")
    assert body["followers_count"] == 0


async def test_followers_count_exact_under_concurrent_follows(api_factory):
    api = await api_factory(login_attempts=1000)  # 21 registrations from one address
    await api.register("star")
    fans = await asyncio.gather(*(api.register(f"fan{i}") for i in range(20)))
    tokens = [fan["access_token"] for fan in fans]

    # Every fan follows twice at once: 40 concurrent requests, 20 follows.
    answers = await asyncio.gather(*(api.call("POST", "/users/star/follow", token=t) for t in tokens * 2))
    assert all(status == 200 for status, _, _ in answers)
    status, star, _ = await api.call("GET", "/users/star")
    assert star["followers_count"] == 20
    status, body, _ = await api.call("GET", "/users/star/followers?limit=100")
    assert body["total"] == 20 and len({i["user"]["username"] for i in body["items"]}) == 20

    # Then 15 of them unfollow, twice each, at once.
    answers = await asyncio.gather(*(api.call("DELETE", "/users/star/follow", token=t) for t in tokens[:15] * 2))
    assert all(status == 200 for status, _, _ in answers)
    status, star, _ = await api.call("GET", "/users/star")
    assert star["followers_count"] == 5
    status, body, _ = await api.call("GET", "/users/star/followers")
    assert body["total"] == 5


# ---------------------------------------------------------------- sfstream user ...


async def sfstream(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sfstream", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_cli_user_create_and_set_admin(api_factory, database_url, tmp_path):
    db = ("--data-dir", str(tmp_path / "data"), "--database-url", database_url, "--bcrypt-rounds", "4")
    password = "cli secret 123"
    code, out, err = await sfstream("user", "create", "--username", "root_admin", "--email", "Root@Example.org",
                                    "--password-stdin", "--admin", *db, stdin=password.encode() + b"\n")
    assert code == 0, err
    assert "created root_admin" in out and "administrator" in out
    assert password not in out + err

    code, out, err = await sfstream("user", "create", "--username", "ROOT_ADMIN", "--email", "x@example.org",
                                    "--password-stdin", *db, stdin=b"another password\n")
    assert code == 1 and "username is already registered" in err
    code, out, err = await sfstream("user", "create", "--username", "shorty", "--email", "s@example.org",
                                    "--password-stdin", *db, stdin=b"p4ss\n")
    assert code == 1 and "password" in err and "p4ss" not in err
    code, out, err = await sfstream("user", "create", "--username", "x y", "--email", "nope",
                                    "--password-stdin", *db, stdin=b"long enough\n")
    assert code == 1 and "username" in err and "email" in err

    async with await open_store(database_url, data_dir=tmp_path) as store:
        user = await store.get_user_by_username("root_admin")
        assert user.is_admin and user.email == "root@example.org"
        assert await verify_password(password, user.password_hash)
        assert await store.get_user_by_username("shorty") is None

    # The account works in the API, as an administrator; a second one is not (the database is not empty).
    api = await api_factory()
    status, body, _ = await api.call("POST", "/auth/login", json={"login": "root_admin", "password": password})
    assert status == 200 and body["user"]["is_admin"] is True
    status, _, _ = await api.call("POST", "/categories", json={"name": "Cooking"}, token=body["access_token"])
    assert status == 201
    bob = (await api.register("bob"))["access_token"]
    status, _, _ = await api.call("POST", "/categories", json={"name": "Baking"}, token=bob)
    assert status == 403

    code, out, err = await sfstream("user", "set-admin", "bob", *db)
    assert code == 0 and "bob is an administrator" in out, err
    status, body, _ = await api.call("POST", "/categories", json={"name": "Baking"}, token=bob)
    assert status == 201
    code, out, err = await sfstream("user", "set-admin", "bob", "--revoke", *db)
    assert code == 0 and "no longer" in out
    status, _, _ = await api.call("DELETE", f"/categories/{body['id']}", token=bob)
    assert status == 403
    code, out, err = await sfstream("user", "set-admin", "nobody", *db)
    assert code == 1 and "no user 'nobody'" in err
